/* fcntl F_SETLK read lock on a rofd of the lower file, then copy-up; another process must still
 * see the lock (F_GETLK reports it, F_SETLK F_WRLCK fails). */
#include "common.h"

int main(int argc, char **argv)
{
	init(argc, argv);
	int rofd = xopen(P("foo"), O_RDONLY);
	struct flock fl = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
	obs_rc("setlk_rdlck_ro_fd", fcntl(rofd, F_SETLK, &fl));
	int rwfd = xopen(P("foo"), O_WRONLY);
	obs_rc("write", write(rwfd, "NEWDATA", 7));
	int pfd[2];
	if (pipe(pfd))
		die("pipe");
	pid_t pid = fork();
	if (pid == 0) {
		char out[3] = {'?', '?', '?'};
		int fd = open(P("foo"), O_RDWR);
		struct flock q = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
		if (fd >= 0 && fcntl(fd, F_GETLK, &q) == 0) {
			out[0] = q.l_type == F_RDLCK ? 'R' : q.l_type == F_WRLCK ? 'W' : q.l_type == F_UNLCK ? 'U' : '?';
			out[1] = q.l_pid == getppid() ? 'P' : 'o';
		}
		struct flock w = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
		out[2] = fd >= 0 && fcntl(fd, F_SETLK, &w) == 0 ? 'A' : (errno == EAGAIN || errno == EACCES) ? 'B' : 'E';
		if (write(pfd[1], out, 3) != 3)
			_exit(1);
		_exit(0);
	}
	char in[3] = {'?', '?', '?'};
	if (read(pfd[0], in, 3) != 3)
		die("pipe read");
	waitpid(pid, NULL, 0);
	obs_str("child_getlk_type", "%s", in[0] == 'R' ? "F_RDLCK" : in[0] == 'W' ? "F_WRLCK" : in[0] == 'U' ? "F_UNLCK" : "error");
	obs_str("child_getlk_pid", "%s", in[1] == 'P' ? "parent" : "other");
	obs_str("child_setlk_wrlck", "%s", in[2] == 'A' ? "acquired" : in[2] == 'B' ? "blocked" : "error");
	return 0;
}
