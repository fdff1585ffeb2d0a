/* Reading a lower file whose atime is old (2000-01-01, atime == mtime) must update st_atime under
 * relatime; overlayfs.rst "Non-standard behavior" (a) says this is not done for lower files.
 * Reading must not copy the file up. */
#include "common.h"

int main(int argc, char **argv)
{
	struct stat a, b;
	char buf[64];
	init(argc, argv);
	if (stat(P("foo"), &a))
		die("stat");
	int fd = xopen(P("foo"), O_RDONLY);
	obs_rc("read", read(fd, buf, sizeof buf));
	close(fd);
	if (stat(P("foo"), &b))
		die("stat");
	obs_str("atime_after_read", b.st_atim.tv_sec != a.st_atim.tv_sec ||
		b.st_atim.tv_nsec != a.st_atim.tv_nsec ? "changed" : "unchanged");
	obs_str("mtime_after_read", b.st_mtim.tv_sec != a.st_mtim.tv_sec ? "changed" : "unchanged");
	return 0;
}
