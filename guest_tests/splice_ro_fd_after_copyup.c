/* rofd opened before copy-up; rwfd open + write "NEWDATA" (copy-up); then splice from rofd must see it. */
#include "common.h"

int main(int argc, char **argv)
{
	char buf[64] = {0};
	int rwfd;
	init(argc, argv);
	int rofd = rofd_then_copyup_write("foo", "NEWDATA", &rwfd);
	ssize_t n = read_fd_via("splice", rofd, buf, 7);
	obs_rc("splice", n);
	obs_data("splice_data", buf, n > 0 ? n : 0);
	obs_fd("ro_fd_full_data", rofd);
	return 0;
}
