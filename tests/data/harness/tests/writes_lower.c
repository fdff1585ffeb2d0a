/* Misbehaves: writes into the lower layer behind the overlay's back (MERGED/../lower0). */
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv)
{
	char p[4096];
	snprintf(p, sizeof p, "%s/../lower0/f", argv[1]);
	FILE *f = fopen(p, "a");
	if (!f) return 3;
	fputs("tamper", f);
	fclose(f);
	printf("tampered=yes\nstray line\n# a diagnostic\n");
	return 7;
}
