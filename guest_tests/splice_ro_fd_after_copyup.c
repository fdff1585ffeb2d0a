/* rofd opened before copy-up; rwfd open + write "NEWDATA" (copy-up); then splice from rofd must see it. */
#include "common.h"

int main(int argc, char **argv)
{
	char buf[64] = {0};
	ssize_t n = -1;
	int rwfd;
	init(argc, argv);
	int rofd = rofd_then_copyup_write("foo", "NEWDATA", &rwfd);
	const char *how = "splice";
	if (!strcmp(how, "pread")) {
		n = pread(rofd, buf, 7, 0);
	} else if (!strcmp(how, "readv")) {
		struct iovec iov[2] = {{buf, 3}, {buf + 3, 4}};
		n = readv(rofd, iov, 2);
	} else {
		int pfd[2];
		if (pipe(pfd))
			die("pipe");
		if (!strcmp(how, "sendfile")) {
			off_t off = 0;
			n = sendfile(pfd[1], rofd, &off, 7);
		} else {
			loff_t off = 0;
			n = splice(rofd, &off, pfd[1], NULL, 7, 0);
		}
		if (n > 0)
			n = read(pfd[0], buf, n);
	}
	obs_rc("splice", n);
	obs_data("splice_data", buf, n > 0 ? n : 0);
	obs_fd("ro_fd_full_data", rofd);
	return 0;
}
