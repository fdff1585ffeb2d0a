/* rofd opened on the lower file; rwfd open + write (copy-up); THEN mmap(rofd, MAP_PRIVATE).
 * The new mapping must show the new data, and a later write via rwfd too (ovl_mmap maps the file
 * opened at open time and lacks the copy-up check of ovl_real_fdget: DESIGN.md §2.4). */
#include "common.h"

int main(int argc, char **argv)
{
	int rwfd;
	init(argc, argv);
	int rofd = rofd_then_copyup_write("foo", "NEWDATA", &rwfd);
	char *map = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, rofd, 0);
	if (map == MAP_FAILED)
		die("mmap");
	obs_data("map_after_copyup", map, 7);
	obs_rc("pwrite2", pwrite(rwfd, "SECOND!", 7, 0));
	obs_data("map_after_second_write", map, 7);
	obs_fd("ro_fd_data", rofd);
	return 0;
}
