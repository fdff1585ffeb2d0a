/* Lower "a" and "b" are hard links. Write via a (copy-up): b must see the data, nlink and st_ino stay
 * shared, a new link c to b joins them. Without index=on overlayfs breaks the link on copy-up
 * (overlayfs.rst "Non-standard behavior", index). */
#include "hardlink_common.h"

int main(int argc, char **argv)
{
	init(argc, argv);
	hardlink_scenario();
	return 0;
}
