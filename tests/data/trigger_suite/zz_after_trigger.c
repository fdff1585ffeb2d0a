/* Runs after the trigger tests (name order): shows the rig still reports the remaining tests after
 * a splat, an oops or a hang took an earlier test (on a fresh boot if needed). */
#include "common.h"

int main(int argc, char **argv)
{
	char buf[16] = {0};
	init(argc, argv);
	int rofd = xopen(P("foo"), O_RDONLY);
	int rwfd = xopen(P("foo"), O_WRONLY);
	obs_rc("write", write(rwfd, "bar", 3));
	ssize_t n = pread(rofd, buf, 3, 0);
	obs_data("read_data", buf, n > 0 ? n : 0);
	return 0;
}
