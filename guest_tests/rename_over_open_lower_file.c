/* rofd open on lower file "foo"; rename(new, foo) replaces it. The rofd keeps the old file. */
#include "common.h"

int main(int argc, char **argv)
{
	struct stat st;
	init(argc, argv);
	int rofd = xopen(P("foo"), O_RDONLY);
	obs_rc("rename", rename(P("other"), P("foo")));
	obs_fd("ro_fd_data", rofd);
	obs_file("path_data", "foo");
	obs_rc("fstat", fstat(rofd, &st));
	obs_int("ro_fd_nlink", st.st_nlink);
	obs_rc("stat_other", stat(P("other"), &st));
	obs_dir("root_listing", ".");
	return 0;
}
