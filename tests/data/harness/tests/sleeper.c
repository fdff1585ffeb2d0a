/* Prints one observation, then hangs: the harness must kill it and report timeout. */
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("before=sleep\n"); fflush(stdout); for (;;) pause(); }
