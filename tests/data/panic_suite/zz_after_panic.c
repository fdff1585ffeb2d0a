/* Runs after crash_panic: must be reported from a fresh boot. */
#include "common.h"

int main(int argc, char **argv)
{
	char buf[8] = {0};
	init(argc, argv);
	int fd = xopen(P("foo"), O_RDONLY);
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	obs_data("data", buf, n > 0 ? n : 0);
	return 0;
}
