/* d/c is whited out in the upper layer by the fixture; unlink d/b at run time; then recreate d/b. */
#include "common.h"

int main(int argc, char **argv)
{
	struct stat st;
	init(argc, argv);
	obs_dir("listing_initial", "d");
	obs_rc("stat_whited_out_c", stat(P("d/c"), &st));
	obs_rc("unlink_b", unlink(P("d/b")));
	obs_dir("listing_after_unlink", "d");
	int fd = open(P("d/b"), O_WRONLY | O_CREAT | O_EXCL, 0644);
	obs_rc("recreate_b", fd);
	xwrite(fd, "new-b");
	close(fd);
	obs_dir("listing_after_recreate", "d");
	obs_file("data_b", "d/b");
	obs_rc("rmdir_d_nonempty", rmdir(P("d")));
	return 0;
}
