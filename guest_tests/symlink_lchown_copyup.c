/* lchown of a lower symlink copies up the link itself; its target must survive. */
#include "common.h"

int main(int argc, char **argv)
{
	char buf[256];
	struct stat st;
	init(argc, argv);
	ssize_t n = readlink(P("l"), buf, sizeof buf);
	obs_data("readlink_before", buf, n > 0 ? n : 0);
	obs_rc("lchown", lchown(P("l"), 1234, 1234));
	n = readlink(P("l"), buf, sizeof buf);
	obs_data("readlink_after", buf, n > 0 ? n : 0);
	obs_rc("lstat", lstat(P("l"), &st));
	obs_int("lstat_uid", st.st_uid);
	obs_yes("lstat_is_link", S_ISLNK(st.st_mode));
	obs_file("data_through_link", "l");
	return 0;
}
