/* rofd opened on the lower file; rwfd open + write (copy-up); THEN mmap(rofd, MAP_PRIVATE).
 * The new mapping must show the new data, and a later write via rwfd too (ovl_mmap maps the file
 * opened at open time and lacks the copy-up check of ovl_real_fdget: docs/design.md §2 case 4). */
#include "mmap_ro_fd.h"

int main(int argc, char **argv)
{
	return map_after_copyup(argc, argv, MAP_PRIVATE);
}
