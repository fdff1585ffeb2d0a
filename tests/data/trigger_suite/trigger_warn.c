/* copy-up of a lower file named kproto-warn-1: the warn fixture patch fires here */
#include "trigger.h"

int main(int argc, char **argv)
{
	return trigger(argc, argv, "kproto-warn-1");
}
