/* Copy up one lower file whose name selects a fixture patch's fault (tests/data/patches/README.md). */
#include "common.h"

static int trigger(int argc, char **argv, const char *name)
{
	init(argc, argv);
	diag("copying up %s", name);
	int fd = open(P(name), O_WRONLY);
	obs_rc("open_wronly", fd);
	if (fd >= 0) {
		obs_rc("write", write(fd, "new", 3));
		close(fd);
	}
	obs_str("done", "yes");
	return 0;
}
