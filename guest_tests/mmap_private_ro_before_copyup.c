/* mmap(rofd, MAP_PRIVATE) of a lower file made BEFORE copy-up; then rwfd open + write (copy-up).
 * The mapping must show the new data (POSIX for MAP_SHARED; Linux page-cache semantics for untouched
 * MAP_PRIVATE pages). overlayfs.rst "Non-standard behavior" (b) documents the MAP_SHARED case. */
#include "mmap_ro_fd.h"

int main(int argc, char **argv)
{
	return map_before_copyup(argc, argv, MAP_PRIVATE);
}
