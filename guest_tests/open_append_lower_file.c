/* open(O_WRONLY|O_APPEND) of a lower file (copy-up); the write lands at the end, seen by all fds. */
#include "common.h"

int main(int argc, char **argv)
{
	struct stat st;
	init(argc, argv);
	int rofd = xopen(P("foo"), O_RDONLY);
	int fd = xopen(P("foo"), O_WRONLY | O_APPEND);
	obs_rc("write", write(fd, "tail\n", 5));
	obs_int("offset_after_append", lseek(fd, 0, SEEK_CUR));
	obs_file("path_data", "foo");
	obs_fd("ro_fd_data", rofd);
	fstat(rofd, &st);
	obs_int("ro_fd_size", st.st_size);
	return 0;
}
