/* copy-up of a lower file named kproto-oops-1: the oops fixture patch fires here */
#include "trigger.h"

int main(int argc, char **argv)
{
	return trigger(argc, argv, "kproto-oops-1");
}
