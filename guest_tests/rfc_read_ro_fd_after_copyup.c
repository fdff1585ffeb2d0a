/* The LKML 2016 RFC reproducer, exactly: foo exists on the lower layer only.
 *   rofd = open("/ovl/foo", O_RDONLY);
 *   rwfd = open("/ovl/foo", O_WRONLY);   -- this causes copy up
 *   write(rwfd, "bar", 3);
 *   read(rofd, buf, 3);
 *   assert(memcmp(buf, "bar", 3) == 0);
 */
#include "common.h"

int main(int argc, char **argv)
{
	char buf[4] = {0};
	init(argc, argv);
	int rofd = xopen(P("foo"), O_RDONLY);
	int rwfd = xopen(P("foo"), O_WRONLY);
	obs_rc("write", write(rwfd, "bar", 3));
	ssize_t n = read(rofd, buf, 3);
	obs_rc("read", n);
	obs_int("read_len", n);
	obs_data("read_data", buf, n > 0 ? n : 0);
	obs_yes("assert_read_is_bar", n == 3 && memcmp(buf, "bar", 3) == 0);
	return 0;
}
