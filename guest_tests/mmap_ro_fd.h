/* The mmap-from-a-read-only-fd probes (docs/design.md §2 cases 3 and 4), shared by the MAP_SHARED and
 * MAP_PRIVATE variants: only the mapping flag differs between them. */
#include "common.h"

/* Mapping made BEFORE the copy-up; then rwfd open + write (copy-up): the mapping must show the new data. */
static __attribute__((unused)) int map_before_copyup(int argc, char **argv, int map_flags)
{
	init(argc, argv);
	int rofd = xopen(P("foo"), O_RDONLY);
	char *map = mmap(NULL, 4096, PROT_READ, map_flags, rofd, 0);
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

/* rofd opened on the lower file; rwfd open + write (copy-up); THEN the mapping from rofd: it must show
 * the new data, and a later write via rwfd too. */
static __attribute__((unused)) int map_after_copyup(int argc, char **argv, int map_flags)
{
	int rwfd;
	init(argc, argv);
	int rofd = rofd_then_copyup_write("foo", "NEWDATA", &rwfd);
	char *map = mmap(NULL, 4096, PROT_READ, map_flags, rofd, 0);
	if (map == MAP_FAILED)
		die("mmap");
	obs_data("map_after_copyup", map, 7);
	obs_rc("pwrite2", pwrite(rwfd, "SECOND!", 7, 0));
	obs_data("map_after_second_write", map, 7);
	obs_fd("ro_fd_data", rofd);
	return 0;
}
