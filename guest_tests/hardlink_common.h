/* Shared body of the hardlink_lower_* tests: lower files "a" and "b" are one inode (nlink 2). */
#include "common.h"

static void hardlink_scenario(void)
{
	struct stat sa, sb, sa2, sb2;
	if (stat(P("a"), &sa) || stat(P("b"), &sb))
		die("stat");
	obs_int("nlink_a_before", sa.st_nlink);
	obs_yes("ino_a_equals_b_before", sa.st_ino == sb.st_ino && sa.st_dev == sb.st_dev);
	int rofd_b = xopen(P("b"), O_RDONLY);
	int fd = xopen(P("a"), O_WRONLY | O_APPEND);
	obs_rc("append_via_a", write(fd, "more\n", 5));
	obs_file("data_a_after", "a");
	obs_file("data_b_after", "b");
	obs_fd("ro_fd_b_data_after", rofd_b);
	if (stat(P("a"), &sa2) || stat(P("b"), &sb2))
		die("stat");
	obs_int("nlink_a_after", sa2.st_nlink);
	obs_int("nlink_b_after", sb2.st_nlink);
	obs_yes("ino_a_equals_b_after", sa2.st_ino == sb2.st_ino && sa2.st_dev == sb2.st_dev);
	obs_yes("ino_a_stable", sa2.st_ino == sa.st_ino);
	obs_rc("link_c_to_b", link(P("b"), P("c")));
	struct stat sc;
	obs_rc("stat_c", stat(P("c"), &sc));
	obs_int("nlink_c", sc.st_nlink);
	obs_file("data_c", "c");
}
