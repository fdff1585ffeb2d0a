/* write(2) into a lower file (copy-up in the write path's open, then the write under the overlay
 * inode lock) with the data coming from a MAP_SHARED mapping of *another lower file* made through a
 * read-only fd, untouched until the write copies from it: the fault on the source happens with the
 * destination's locks held, and (with a patch that copies up on shared mmap) the mapping itself
 * was made by a copy-up under mmap_lock. The same from a mapping of the destination itself. */
#include "common.h"

int main(int argc, char **argv)
{
	char buf[64] = {0};
	init(argc, argv);
	int sfd = xopen(P("src"), O_RDONLY);
	char *src = mmap(NULL, 4096, PROT_READ, MAP_SHARED, sfd, 0);
	obs_yes("map_src", src != MAP_FAILED);
	if (src == MAP_FAILED)
		return 1;
	int dfd = xopen(P("dst"), O_WRONLY);
	obs_rc("write_from_map", write(dfd, src, 11));
	int self = xopen(P("self"), O_RDWR);
	char *m = mmap(NULL, 4096, PROT_READ, MAP_SHARED, self, 0);
	obs_yes("map_self", m != MAP_FAILED);
	if (m != MAP_FAILED)
		obs_rc("pwrite_self_from_own_map", pwrite(self, m, 5, 6));
	int rfd = xopen(P("dst"), O_RDONLY);
	ssize_t n = pread(rfd, buf, sizeof(buf) - 1, 0);
	obs_data("dst_data", buf, n > 0 ? n : 0);
	memset(buf, 0, sizeof(buf));
	n = pread(self, buf, sizeof(buf) - 1, 0);
	obs_data("self_data", buf, n > 0 ? n : 0);
	return 0;
}
