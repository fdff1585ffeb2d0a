/* utimensat by path (metadata copy-up) to fixed times, then fstat via the rofd opened before. */
#include "common.h"

int main(int argc, char **argv)
{
	struct stat st;
	struct timespec ts[2] = {{1000000000, 0}, {1234567890, 0}};
	init(argc, argv);
	int rofd = xopen(P("foo"), O_RDONLY);
	obs_rc("utimensat", utimensat(AT_FDCWD, P("foo"), ts, 0));
	obs_rc("fstat", fstat(rofd, &st));
	obs_yes("ro_fd_atime_is_set_value", st.st_atim.tv_sec == 1000000000);
	obs_yes("ro_fd_mtime_is_set_value", st.st_mtim.tv_sec == 1234567890);
	if (stat(P("foo"), &st))
		die("stat");
	obs_yes("path_atime_is_set_value", st.st_atim.tv_sec == 1000000000);
	obs_yes("path_mtime_is_set_value", st.st_mtim.tv_sec == 1234567890);
	return 0;
}
