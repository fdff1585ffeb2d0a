/* Two lower layers: the topmost one wins lookups; copy-up of a file from the bottom layer;
 * a merged dir across both layers. */
#include "common.h"

int main(int argc, char **argv)
{
	init(argc, argv);
	obs_file("data_f", "f");
	obs_file("data_g", "g");
	obs_dir("listing_d", "d");
	int fd = xopen(P("g"), O_WRONLY | O_APPEND);
	obs_rc("append_g", write(fd, "+", 1));
	close(fd);
	obs_file("data_g_after", "g");
	int rofd = xopen(P("d/bottom"), O_RDONLY);
	obs_rc("chmod_d_bottom", chmod(P("d/bottom"), 0600));
	obs_fd("ro_fd_d_bottom", rofd);
	obs_dir("listing_d_after", "d");
	return 0;
}
