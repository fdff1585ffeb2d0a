/* Exec a binary that lives on the lower layer (a copy of this test program, "prog"), then try to
 * open it for writing and truncate it: POSIX says ETXTBSY. overlayfs.rst "Non-standard behavior" (c).
 * The child runs "prog --sleep-child FD": it writes one byte to FD and waits to be killed. */
#include "common.h"

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "--sleep-child")) {
		int fd = atoi(argv[2]);
		if (write(fd, "r", 1) != 1)
			return 1;
		for (;;)
			pause();
	}
	init(argc, argv);
	int pfd[2];
	if (pipe(pfd))
		die("pipe");
	pid_t pid = fork();
	if (pid == 0) {
		char fdarg[16];
		close(pfd[0]);
		snprintf(fdarg, sizeof fdarg, "%d", pfd[1]);
		execl(P("prog"), "prog", "--sleep-child", fdarg, (char *)NULL);
		_exit(127);
	}
	close(pfd[1]);
	char c = 0;
	ssize_t n = read(pfd[0], &c, 1);
	obs_yes("child_running", n == 1 && c == 'r');
	int fd = open(P("prog"), O_WRONLY);
	obs_rc("open_wronly_while_executing", fd);
	if (fd >= 0)
		close(fd);
	obs_rc("truncate_while_executing", truncate(P("prog"), 0));
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	fd = open(P("prog"), O_WRONLY);
	obs_rc("open_wronly_after_exit", fd);
	return 0;
}
