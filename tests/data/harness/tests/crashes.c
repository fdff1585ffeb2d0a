#include <signal.h>
#include <stdio.h>
int main(void) { printf("about=to_crash\n"); fflush(stdout); raise(SIGSEGV); return 0; }
