/* rofd opened before copy-up; rwfd open + write "NEWDATA" (copy-up); then pread from rofd must see it. */
#include "common.h"

int main(int argc, char **argv)
{
	char buf[64] = {0};
	int rwfd;
	init(argc, argv);
	int rofd = rofd_then_copyup_write("foo", "NEWDATA", &rwfd);
	ssize_t n = read_fd_via("pread", rofd, buf, 7);
	obs_rc("pread", n);
	obs_data("pread_data", buf, n > 0 ? n : 0);
	obs_fd("ro_fd_full_data", rofd);
	return 0;
}
