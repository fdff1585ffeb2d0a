/* Panics the guest kernel (sysrq-c). Guest-only: never run this suite on the host or the reference. */
#include "common.h"

int main(int argc, char **argv)
{
	init(argc, argv);
	obs_str("about_to_panic", "yes");
	int fd = open("/proc/sysrq-trigger", O_WRONLY);
	if (fd >= 0)
		(void)!write(fd, "c", 1);
	obs_str("survived", "yes");
	return 0;
}
