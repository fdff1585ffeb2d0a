/* readdir of a lower dir after copy-up of one entry and creation of another: each name once. */
#include "common.h"

int main(int argc, char **argv)
{
	init(argc, argv);
	obs_dir("listing_before", "d");
	int fd = xopen(P("d/a"), O_WRONLY | O_APPEND);
	xwrite(fd, "x");
	close(fd);
	obs_dir("listing_after_copyup", "d");
	close(xopen(P("d/new"), O_WRONLY | O_CREAT));
	obs_dir("listing_after_create", "d");
	obs_dir("root_listing", ".");
	return 0;
}
