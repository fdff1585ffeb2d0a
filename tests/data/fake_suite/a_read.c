/* Reads its lower file and prints it: the same observation on every correct target. The runner and
 * kproto test orchestration tests replay this observation from a fake machine. */
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	char path[4096], buf[64] = {0};
	snprintf(path, sizeof(path), "%s/f", argc > 1 ? argv[1] : ".");
	int fd = open(path, O_RDONLY);
	ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
	printf("data=%s\n", n > 0 ? buf : "?");
	return 0;
}
