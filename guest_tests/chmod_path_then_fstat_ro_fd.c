/* chmod by path (metadata copy-up), then fstat via the rofd opened before. */
#include "common.h"

int main(int argc, char **argv)
{
	struct stat st;
	init(argc, argv);
	int rofd = xopen(P("foo"), O_RDONLY);
	obs_rc("chmod", chmod(P("foo"), 0600));
	obs_rc("fstat", fstat(rofd, &st));
	obs_mode("ro_fd_mode", st.st_mode);
	if (stat(P("foo"), &st))
		die("stat");
	obs_mode("path_mode", st.st_mode);
	obs_fd("ro_fd_data", rofd);
	return 0;
}
