/* rofd open on a lower file; unlink(path) (whiteout); the rofd still reads the data; nlink drops to 0. */
#include "common.h"

int main(int argc, char **argv)
{
	struct stat st;
	init(argc, argv);
	int rofd = xopen(P("foo"), O_RDONLY);
	obs_rc("unlink", unlink(P("foo")));
	obs_fd("ro_fd_data", rofd);
	obs_rc("fstat", fstat(rofd, &st));
	obs_int("ro_fd_nlink", st.st_nlink);
	obs_rc("stat_path", stat(P("foo"), &st));
	obs_dir("root_listing", ".");
	int fd = open(P("foo"), O_WRONLY | O_CREAT | O_EXCL, 0600);
	obs_rc("recreate", fd);
	obs_fd("ro_fd_data_after_recreate", rofd);
	obs_file("path_data_after_recreate", "foo");
	return 0;
}
