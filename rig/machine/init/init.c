/*
 * kproto guest init: PID 1 on the curated guest root (rig/machine/guestroot.py).
 *
 * That root holds no programs of its own: /bin, /lib, /sbin are symlinks into /usr, the host's /usr
 * exported read-only over virtio-fs (tag "usr"). So PID 1 is this static binary. It mounts /usr, a
 * tmpfs on /mnt and the run's writable share (virtio-fs tag argv[1]) on argv[2], then carries out the boot
 * plan argv[2]/boot.plan, rendered per boot by rig/machine/qemu.py from templates/boot.plan.j2: one step
 * per line, words separated by blanks, '#' comments:
 *
 *   mount SOURCE DIR TYPE OPTIONS|-     mount(2) (DIR created first; OPTIONS is the filesystem's data)
 *   mkdir DIR MODE                      mkdir(2), octal mode, an existing DIR is fine
 *   write PATH WORD...                  write the words and a newline to PATH (sysctls)
 *   copy SRC DEST MODE                  copy a file, octal mode
 *   spawn LOG PROGRAM ARG...            start a program in its own session, stdout+stderr to LOG
 *   relay PORT HELLO ACK LOG [NAME=VALUE...] PROGRAM ARG...
 *                                       serve the virtio-serial port named PORT (see relay() below):
 *                                       each host connection gets its own PROGRAM, with NAME=VALUE
 *                                       added to its environment, stderr to LOG
 *   ready MARKER                        print "MARKER <uptime>" on the console: the host waits for it
 *
 * A step that fails prints "kproto-init: <step>: <error>" on the console and the plan goes on (the
 * host then sees what is missing, e.g. SSH never answering, with this line in the console tail). After
 * the plan it reaps orphans forever. Doing this here instead of in a shell saves one exec per step
 * (sh, mount, mkdir, cp: each 0.1-0.25 s under TCG).
 *
 * The kernel passes argv[1..] from the words after "--" on its command line.
 */
#define _GNU_SOURCE                  /* memmem */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define MAX_WORDS 64

static int failures;

static void say(const char *step, const char *what)
{
	fprintf(stderr, "kproto-init: %s: %s\n", step, what);
	failures++;
}

static void die(const char *what, const char *where)
{
	fprintf(stderr, "kproto-init: %s %s: %s\n", what, where, strerror(errno));
	exit(1);
}

static int mkdirs(const char *path, mode_t mode)
{
	char buf[4096];
	size_t n = strlen(path);

	if (n >= sizeof(buf))
		return errno = ENAMETOOLONG, -1;
	memcpy(buf, path, n + 1);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(buf, 0755) && errno != EEXIST)
			return -1;
		*p = '/';
	}
	if (mkdir(buf, mode) && errno != EEXIST)
		return -1;
	return 0;
}

static int copy_file(const char *src, const char *dst, mode_t mode)
{
	char buf[65536];
	ssize_t n;
	int in = open(src, O_RDONLY | O_CLOEXEC), out;

	if (in < 0)
		return -1;
	out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	if (out < 0) {
		close(in);
		return -1;
	}
	while ((n = read(in, buf, sizeof(buf))) > 0)
		if (write(out, buf, n) != n) {
			n = -1;
			break;
		}
	close(in);
	if (close(out) || n < 0 || fchmodat(AT_FDCWD, dst, mode, 0))
		return -1;
	return 0;
}

static int spawn(const char *log, char **argv)
{
	pid_t pid = fork();

	if (pid < 0)
		return -1;
	if (pid == 0) {
		int null = open("/dev/null", O_RDONLY), out = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);

		setsid();
		if (null >= 0)
			dup2(null, 0);
		if (out >= 0) {
			dup2(out, 1);
			dup2(out, 2);
		}
		execv(argv[0], argv);
		fprintf(stderr, "kproto-init: exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	return 0;
}

/*
 * The SSH control channel. The guest has no network (its kernel has no sockets at all): the host
 * reaches its SSH server through a virtio-serial port, which QEMU connects to a unix socket in the run
 * directory. The port is one byte stream, so a forked relay gives every host connection its own server
 * process (PROGRAM, dropbear in inetd mode) and marks where a connection begins and ends. The server's
 * stdin and stdout are a pseudo-terminal in raw mode (8-bit clean, no echo, no signals): dropbear reads
 * and writes its connection on fd 0, so it needs one file that goes both ways, and a pipe goes one way.
 * It asks that file for the peer's address, which the socket shim LD_PRELOADed into it answers
 * (rig/machine/sockshim/sockshim.c, named by a NAME=VALUE word of the relay step).
 *
 *   host -> guest  HELLO      a new host connection: any server still running is killed, a new one
 *                             is started, and its output is preceded by
 *   guest -> host  ACK        everything before it belongs to an older connection: the host drops it;
 *   guest -> host  frames     the server's output, each read of it as a 4-byte big-endian length and
 *                             the bytes; a frame of length 0 says the server exited: the host reads
 *                             end-of-file there, as from a closed TCP connection.
 *
 * The words come from the boot plan (rig/machine/control.py has them): 30-odd bytes with a random
 * part, in a stream that is SSH ciphertext after the key exchange, so they do not occur by chance (a
 * guest program's output is encrypted before it reaches the relay). The server's end is a frame, not a
 * word: a host looking for an end word must hold back every tail that could be its start, and an SSH
 * packet that happened to end so waited for data that never came. Host -> server bytes pass through
 * unchanged; one 64 KiB buffer per direction; a direction is read only when its buffer is empty, so
 * neither side can stall the other. virtio_console's read() returns 0 while no host is connected (poll() says
 * POLLHUP): the session, if any, is ended and the relay looks again every 20 ms.
 */
#define FRAME_HEADER 4
struct buf {
	char d[65536];
	size_t off, len;
};

/* a raw pseudo-terminal: its master (non-blocking) in *MASTER, its other end returned; -1 on failure */
static int raw_pty(int *master)
{
	int unlock = 0, peer;
	struct termios t;

	*master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
	if (*master < 0)
		return -1;
	if (ioctl(*master, TIOCSPTLCK, &unlock) ||
	    (peer = ioctl(*master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0) {
		close(*master);
		return -1;
	}
	if (tcgetattr(peer, &t) == 0) {
		cfmakeraw(&t);
		tcsetattr(peer, TCSANOW, &t);
	}
	return peer;
}

/* ARGV: [NAME=VALUE...] PROGRAM ARG... */
static pid_t session_start(int *conn, char **argv, const char *log)
{
	int master, peer = raw_pty(&master);
	pid_t pid;

	if (peer < 0)
		return -1;
	pid = fork();
	if (pid < 0) {
		close(master);
		close(peer);
		return -1;
	}
	if (pid == 0) {
		int err = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);

		setsid();
		dup2(peer, 0);
		dup2(peer, 1);
		if (err >= 0)
			dup2(err, 2);
		for (; *argv && strchr(*argv, '=') && **argv != '/'; argv++)
			putenv(*argv);
		if (!*argv) {
			fprintf(stderr, "kproto-init: relay: no program after the NAME=VALUE words\n");
			_exit(127);
		}
		execv(argv[0], argv);
		fprintf(stderr, "kproto-init: relay: exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	close(peer);
	*conn = master;
	return pid;
}

static void session_end(int *conn, pid_t *pid)
{
	if (*conn >= 0)
		close(*conn);
	if (*pid > 0)
		kill(*pid, SIGKILL);         /* reaped without blocking: it may be stuck in the kernel under test */
	*conn = -1;
	*pid = -1;
}

static void put(struct buf *b, const char *data, size_t n)
{
	if (n > sizeof(b->d) - b->len)
		n = sizeof(b->d) - b->len;
	memcpy(b->d + b->len, data, n);
	b->len += n;
}

/* the device of the virtio-serial port whose name is NAME (/sys/class/virtio-ports/vportXpY/name) */
static int port_path(const char *name, char *path, size_t size)
{
	DIR *d = opendir("/sys/class/virtio-ports");
	struct dirent *e;
	int found = -1;

	if (!d)
		return -1;
	while (found && (e = readdir(d))) {
		char file[512], got[256] = "";
		FILE *f;

		if (e->d_name[0] == '.')
			continue;
		snprintf(file, sizeof(file), "/sys/class/virtio-ports/%s/name", e->d_name);
		f = fopen(file, "re");
		if (!f)
			continue;
		if (fgets(got, sizeof(got), f))
			got[strcspn(got, "\n")] = 0;
		fclose(f);
		if (!strcmp(got, name)) {
			snprintf(path, size, "/dev/%s", e->d_name);
			found = 0;
		}
	}
	closedir(d);
	if (found)
		errno = ENODEV;
	return found;
}

/* a frame header: LEN in 4 big-endian bytes */
static void frame_header(char *h, size_t len)
{
	h[0] = (char)(len >> 24);
	h[1] = (char)(len >> 16);
	h[2] = (char)(len >> 8);
	h[3] = (char)len;
}

/* the end frame (length 0) into B: the host reads end-of-file there */
static void put_end_frame(struct buf *b)
{
	char end[FRAME_HEADER];

	frame_header(end, 0);
	put(b, end, FRAME_HEADER);
}

static void relay_loop(int port, const char *hello, const char *ack, const char *log, char **argv)
{
	static struct buf up, down;         /* up: host -> server, down: server -> host */
	size_t hlen = strlen(hello), carry = 0;
	char scan[sizeof(up.d) + 256];
	int conn = -1;
	pid_t pid = -1;

	for (;;) {
		struct pollfd p[2] = {
			{ port, (up.len ? 0 : POLLIN) | (down.len ? POLLOUT : 0), 0 },
			{ conn, conn < 0 ? 0 : (down.len ? 0 : POLLIN) | (up.len ? POLLOUT : 0), 0 },
		};

		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
		if (poll(p, 2, -1) < 0) {
			if (errno != EINTR)
				usleep(20000);
			continue;
		}
		if ((p[0].revents & POLLHUP) && up.len) {
			usleep(20000);              /* the server has not taken the last bytes yet: no spin */
		} else if (p[0].revents & (POLLIN | POLLHUP)) {
			ssize_t n = read(port, scan + carry, sizeof(up.d));

			if (n == 0) {
				/* no host connected (or it left): end the session, look again soon */
				session_end(&conn, &pid);
				up.len = up.off = down.len = down.off = carry = 0;
				usleep(20000);
				continue;
			}
			if (n > 0) {
				size_t total = carry + (size_t)n;
				char *h = memmem(scan, total, hello, hlen);

				if (h) {
					size_t rest = total - (size_t)(h - scan) - hlen;

					session_end(&conn, &pid);
					up.len = up.off = down.len = down.off = 0;
					pid = session_start(&conn, argv, log);
					if (pid < 0)
						fprintf(stderr, "kproto-init: relay: cannot start %s: %s\n", argv[0], strerror(errno));
					else
						put(&up, h + hlen, rest);
					put(&down, ack, strlen(ack));
					if (pid < 0)
						put_end_frame(&down);   /* no server */
					carry = 0;
				} else {
					if (conn >= 0)
						put(&up, scan + carry, (size_t)n);
					/* keep the tail: HELLO may straddle two reads */
					carry = total < hlen - 1 ? total : hlen - 1;
					memmove(scan, scan + total - carry, carry);
				}
			}
		}
		if ((p[0].revents & POLLOUT) && down.len) {
			ssize_t n = write(port, down.d + down.off, down.len - down.off);

			if (n > 0 && (down.off += (size_t)n) == down.len)
				down.off = down.len = 0;
		}
		if (conn < 0)
			continue;
		if ((p[1].revents & POLLOUT) && up.len) {
			ssize_t n = write(conn, up.d + up.off, up.len - up.off);

			if (n > 0 && (up.off += (size_t)n) == up.len)
				up.off = up.len = 0;
			else if (n < 0 && errno != EAGAIN)
				up.off = up.len = 0;      /* the server is gone: its end-of-file follows */
		}
		if ((p[1].revents & (POLLIN | POLLHUP | POLLERR)) && !down.len) {
			ssize_t n = read(conn, down.d + FRAME_HEADER, sizeof(down.d) - FRAME_HEADER);

			if (n > 0) {
				frame_header(down.d, (size_t)n);
				down.len = FRAME_HEADER + (size_t)n;
			} else if (n == 0 || errno != EAGAIN) {    /* EIO: the server closed its end */
				session_end(&conn, &pid);
				up.len = up.off = 0;
				put_end_frame(&down);
			}
		}
	}
}

static int relay(char **w)
{
	char path[300];
	pid_t pid;
	int port;

	if (port_path(w[0], path, sizeof(path)))
		return -1;
	port = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (port < 0)
		return -1;
	pid = fork();
	if (pid < 0) {
		close(port);
		return -1;
	}
	if (pid == 0) {
		setsid();
		relay_loop(port, w[1], w[2], w[3], w + 4);
		_exit(1);
	}
	close(port);
	return 0;
}

static void ready(const char *marker)
{
	char up[64] = "?";
	FILE *f = fopen("/proc/uptime", "re");

	if (f) {
		if (fscanf(f, "%63s", up) != 1)
			strcpy(up, "?");
		fclose(f);
	}
	printf("%s %s\n", marker, up);
	fflush(stdout);
}

static void step(char *line, int lineno)
{
	char *w[MAX_WORDS + 1], *save = NULL, label[96];
	int n = 0;

	for (char *t = strtok_r(line, " \t\n", &save); t && n < MAX_WORDS; t = strtok_r(NULL, " \t\n", &save))
		w[n++] = t;
	w[n] = NULL;
	if (n == 0 || w[0][0] == '#')
		return;
	snprintf(label, sizeof(label), "boot.plan line %d (%s)", lineno, w[0]);
	errno = 0;
	if (!strcmp(w[0], "mount") && n == 5) {
		if (mkdirs(w[2], 0755) || mount(w[1], w[2], w[3], 0, strcmp(w[4], "-") ? w[4] : NULL))
			say(label, strerror(errno));
	} else if (!strcmp(w[0], "mkdir") && n == 3) {
		if (mkdirs(w[1], (mode_t)strtol(w[2], NULL, 8)) || chmod(w[1], (mode_t)strtol(w[2], NULL, 8)))
			say(label, strerror(errno));
	} else if (!strcmp(w[0], "write") && n >= 3) {
		FILE *f = fopen(w[1], "we");
		int bad = !f;

		for (int i = 2; f && i < n; i++)
			bad |= fprintf(f, i + 1 < n ? "%s " : "%s\n", w[i]) < 0;
		if (f)
			bad |= fclose(f) != 0;
		if (bad)
			say(label, strerror(errno));
	} else if (!strcmp(w[0], "copy") && n == 4) {
		if (copy_file(w[1], w[2], (mode_t)strtol(w[3], NULL, 8)))
			say(label, strerror(errno));
	} else if (!strcmp(w[0], "relay") && n >= 6) {
		if (relay(w + 1))
			say(label, strerror(errno));
	} else if (!strcmp(w[0], "spawn") && n >= 3) {
		if (spawn(w[1], w + 2))
			say(label, strerror(errno));
	} else if (!strcmp(w[0], "ready") && n == 2) {
		ready(w[1]);
	} else {
		say(label, "unknown step or wrong number of words");
	}
}

static void on_child(int sig)
{
	(void)sig;
}

int main(int argc, char **argv)
{
	char path[4096], line[4096];
	FILE *plan;
	int lineno = 0;

	if (argc < 3) {
		fprintf(stderr, "kproto-init: usage: init SHARE_TAG SHARE_MOUNTPOINT (kernel command line: -- TAG DIR)\n");
		return 1;
	}
	if (mount("usr", "/usr", "virtiofs", MS_RDONLY, NULL))
		die("cannot mount the host's /usr (virtio-fs tag usr) on", "/usr");
	if (mount("tmpfs", "/mnt", "tmpfs", 0, "mode=755"))
		die("cannot mount a tmpfs on", "/mnt");
	if (mkdir(argv[2], 0755) && errno != EEXIST)
		die("cannot create", argv[2]);
	if (mount(argv[1], argv[2], "virtiofs", 0, NULL))
		die("cannot mount the run share on", argv[2]);
	snprintf(path, sizeof(path), "%s/boot.plan", argv[2]);
	plan = fopen(path, "re");
	if (!plan)
		die("cannot read", path);
	while (fgets(line, sizeof(line), plan))
		step(line, ++lineno);
	fclose(plan);
	if (failures)
		fprintf(stderr, "kproto-init: %d step(s) of %s failed\n", failures, path);

	/* PID 1 must not exit (that panics the kernel): reap orphans until the host powers the VM off */
	signal(SIGCHLD, on_child);
	for (;;)
		if (waitpid(-1, NULL, 0) < 0 && errno == ECHILD)
			pause();
}
