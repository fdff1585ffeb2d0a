/* copy-up of a lower file named kproto-abba-1: the abba fixture patch fires here */
#include "trigger.h"

int main(int argc, char **argv)
{
	return trigger(argc, argv, "kproto-abba-1");
}
