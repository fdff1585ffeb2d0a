/* chown by path (metadata copy-up), then fstat via the rofd opened before. */
#include "common.h"

int main(int argc, char **argv)
{
	struct stat st;
	init(argc, argv);
	int rofd = xopen(P("foo"), O_RDONLY);
	obs_rc("chown", chown(P("foo"), 1234, 5678));
	obs_rc("fstat", fstat(rofd, &st));
	obs_int("ro_fd_uid", st.st_uid);
	obs_int("ro_fd_gid", st.st_gid);
	if (stat(P("foo"), &st))
		die("stat");
	obs_int("path_uid", st.st_uid);
	obs_int("path_gid", st.st_gid);
	return 0;
}
