/* rename(2) of a directory from the lower layer. POSIX: it moves, contents follow. overlayfs without
 * redirect_dir returns EXDEV (overlayfs.rst "renaming directories"); with redirect_dir=on it works. */
#include "common.h"

int main(int argc, char **argv)
{
	struct stat st;
	init(argc, argv);
	obs_rc("rename_d_to_d2", rename(P("d"), P("d2")));
	obs_rc("stat_d", stat(P("d"), &st));
	obs_dir("listing_d2", "d2");
	obs_file("data_d2_f", "d2/f");
	obs_file("data_d2_sub_g", "d2/sub/g");
	obs_dir("root_listing", ".");
	/* a dir created on the upper layer renames everywhere */
	obs_rc("mkdir_n", mkdir(P("n"), 0755));
	obs_rc("rename_n_to_n2", rename(P("n"), P("n2")));
	/* a file under the moved dir copies up in place */
	int fd = open(P("d2/f"), O_WRONLY | O_APPEND);
	obs_rc("open_d2_f_write", fd);
	if (fd >= 0) {
		obs_rc("append_d2_f", write(fd, "+", 1));
		close(fd);
	}
	obs_file("data_d2_f_after", "d2/f");
	return 0;
}
