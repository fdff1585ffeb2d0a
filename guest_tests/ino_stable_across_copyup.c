/* st_ino of a lower file must not change when it is copied up (data or metadata), and must equal
 * the rofd's fstat and readdir's d_ino (all layers on one fs: overlayfs.rst "Inode properties"). */
#include "common.h"

static ino_t dino(const char *name)
{
	DIR *d = opendir(P("."));
	struct dirent *de;
	ino_t r = 0;
	while (d && (de = readdir(d)))
		if (!strcmp(de->d_name, name))
			r = de->d_ino;
	if (d)
		closedir(d);
	return r;
}

int main(int argc, char **argv)
{
	struct stat s0, s1, s2, sf, sg0, sg1;
	init(argc, argv);
	if (stat(P("foo"), &s0) || stat(P("meta"), &sg0))
		die("stat");
	obs_yes("d_ino_equals_st_ino_before", dino("foo") == s0.st_ino);
	int rofd = xopen(P("foo"), O_RDONLY);
	int rwfd = xopen(P("foo"), O_WRONLY);
	xwrite(rwfd, "X");
	if (stat(P("foo"), &s1) || fstat(rofd, &sf))
		die("stat");
	obs_yes("ino_stable_after_data_copyup", s1.st_ino == s0.st_ino);
	obs_yes("dev_stable_after_data_copyup", s1.st_dev == s0.st_dev);
	obs_yes("ro_fd_ino_equals_path_ino", sf.st_ino == s1.st_ino && sf.st_dev == s1.st_dev);
	obs_yes("d_ino_equals_st_ino_after", dino("foo") == s1.st_ino);
	obs_rc("chmod_meta", chmod(P("meta"), 0600));
	if (stat(P("meta"), &sg1))
		die("stat");
	obs_yes("ino_stable_after_metadata_copyup", sg1.st_ino == sg0.st_ino);
	obs_yes("distinct_files_distinct_ino", sg1.st_ino != s1.st_ino);
	close(rwfd);
	if (stat(P("foo"), &s2))
		die("stat");
	obs_yes("ino_stable_after_close", s2.st_ino == s0.st_ino);
	return 0;
}
