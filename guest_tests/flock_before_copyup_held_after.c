/* flock(LOCK_EX) on a rofd of the lower file, then copy-up via a write through another fd.
 * Another process opening the (now copied-up) file must still see the lock. */
#include "common.h"

static int child_try(void)
{
	pid_t pid = fork();
	if (pid == 0) {
		int fd = open(P("foo"), O_RDONLY);
		if (fd < 0)
			_exit(100);
		int rc = flock(fd, LOCK_EX | LOCK_NB);
		_exit(rc == 0 ? 0 : errno == EWOULDBLOCK ? 1 : 2);
	}
	int st;
	waitpid(pid, &st, 0);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static const char *res(int r) { return r == 0 ? "acquired" : r == 1 ? "EWOULDBLOCK" : "error"; }

int main(int argc, char **argv)
{
	init(argc, argv);
	int rofd = xopen(P("foo"), O_RDONLY);
	obs_rc("flock_ex_ro_fd", flock(rofd, LOCK_EX));
	int rwfd = xopen(P("foo"), O_WRONLY);
	obs_rc("write", write(rwfd, "NEWDATA", 7));
	obs_str("child_flock_while_held", "%s", res(child_try()));
	obs_rc("flock_nb_rw_fd_same_process", flock(rwfd, LOCK_EX | LOCK_NB));
	obs_rc("unlock", flock(rofd, LOCK_UN));
	obs_str("child_flock_after_unlock", "%s", res(child_try()));
	return 0;
}
