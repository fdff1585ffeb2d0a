/* ftruncate via the rwfd (copy-up) shrinking then growing the file; read + fstat via the old rofd. */
#include "common.h"

int main(int argc, char **argv)
{
	struct stat st;
	init(argc, argv);
	int rofd = xopen(P("foo"), O_RDONLY);
	int rwfd = xopen(P("foo"), O_WRONLY);
	obs_rc("ftruncate_3", ftruncate(rwfd, 3));
	obs_fd("ro_fd_data_after_shrink", rofd);
	obs_rc("fstat", fstat(rofd, &st));
	obs_int("ro_fd_size_after_shrink", st.st_size);
	obs_rc("ftruncate_6", ftruncate(rwfd, 6));
	obs_fd("ro_fd_data_after_grow", rofd);
	fstat(rofd, &st);
	obs_int("ro_fd_size_after_grow", st.st_size);
	return 0;
}
