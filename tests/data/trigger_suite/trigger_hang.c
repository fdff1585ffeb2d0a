/* copy-up of a lower file named kproto-hang-1: the hang fixture patch fires here */
#include "trigger.h"

int main(int argc, char **argv)
{
	return trigger(argc, argv, "kproto-hang-1");
}
