/* mmap(rofd, MAP_SHARED) of a lower file made BEFORE copy-up; then rwfd open + write (copy-up).
 * The mapping must show the new data (POSIX for MAP_SHARED; Linux page-cache semantics for untouched
 * MAP_PRIVATE pages). overlayfs.rst "Non-standard behavior" (b) documents the MAP_SHARED case. */
#include "common.h"

int main(int argc, char **argv)
{
	init(argc, argv);
	int rofd = xopen(P("foo"), O_RDONLY);
	char *map = mmap(NULL, 4096, PROT_READ, MAP_SHARED, rofd, 0);
	if (map == MAP_FAILED)
		die("mmap");
	obs_data("map_before_write", map, 7);
	int rwfd = xopen(P("foo"), O_WRONLY);
	obs_rc("pwrite", pwrite(rwfd, "NEWDATA", 7, 0));
	obs_data("map_after_write", map, 7);
	obs_rc("msync", msync(map, 4096, MS_SYNC | MS_INVALIDATE));
	obs_data("map_after_msync", map, 7);
	obs_fd("ro_fd_data", rofd);
	return 0;
}
