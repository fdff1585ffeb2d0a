/* open(O_WRONLY|O_TRUNC) of a lower file (copy-up + truncate); the rofd opened before sees it empty. */
#include "common.h"

int main(int argc, char **argv)
{
	struct stat st;
	init(argc, argv);
	int rofd = xopen(P("foo"), O_RDONLY);
	int fd = open(P("foo"), O_WRONLY | O_TRUNC);
	obs_rc("open_trunc", fd);
	if (fstat(rofd, &st))
		die("fstat");
	obs_int("ro_fd_size", st.st_size);
	obs_fd("ro_fd_data", rofd);
	obs_file("path_data", "foo");
	obs_rc("write", write(fd, "x", 1));
	obs_fd("ro_fd_data_after_write", rofd);
	return 0;
}
