/* fstat via the old rofd after copy-up + a write that grows the file: size and mtime must be the new ones. */
#include "common.h"

int main(int argc, char **argv)
{
	struct stat before, after, path;
	int rwfd;
	init(argc, argv);
	int rofd = xopen(P("foo"), O_RDONLY);
	if (fstat(rofd, &before))
		die("fstat");
	rwfd = xopen(P("foo"), O_WRONLY | O_APPEND);
	xwrite(rwfd, "appended-by-rwfd\n");
	obs_rc("fstat", fstat(rofd, &after));
	if (stat(P("foo"), &path))
		die("stat");
	obs_int("size_before", before.st_size);
	obs_int("fstat_size_after_write", after.st_size);
	obs_int("stat_size_after_write", path.st_size);
	obs_str("fstat_mtime_after_write", after.st_mtim.tv_sec != before.st_mtim.tv_sec ||
			after.st_mtim.tv_nsec != before.st_mtim.tv_nsec ? "changed" : "unchanged");
	obs_yes("fstat_mtime_equals_stat_mtime", after.st_mtim.tv_sec == path.st_mtim.tv_sec &&
		after.st_mtim.tv_nsec == path.st_mtim.tv_nsec);
	obs_yes("fstat_ino_equals_stat_ino", after.st_ino == path.st_ino && after.st_dev == path.st_dev);
	obs_fd("ro_fd_data", rofd);
	return 0;
}
