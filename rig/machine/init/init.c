/*
 * kproto guest init: PID 1 on the curated guest root (rig/machine/guestroot.py).
 *
 * That root holds no programs of its own: /bin, /lib, /sbin are symlinks into /usr, the host's /usr
 * exported read-only over virtio-9p (mount tag "usr"). So PID 1 is this static binary. It mounts /usr,
 * a tmpfs on /mnt and the run's writable share (9p tag argv[1]) on argv[2], then carries out the boot
 * plan argv[2]/boot.plan, rendered per boot by rig/machine/qemu.py from templates/boot.plan.j2: one step
 * per line, words separated by blanks, '#' comments:
 *
 *   mount SOURCE DIR TYPE OPTIONS|-     mount(2) (DIR created first; OPTIONS is the filesystem's data)
 *   mkdir DIR MODE                      mkdir(2), octal mode, an existing DIR is fine
 *   write PATH WORD...                  write the words and a newline to PATH (sysctls)
 *   copy SRC DEST MODE                  copy a file, octal mode
 *   ifup IFACE [ADDR/PREFIX]            set an IPv4 address and bring the interface up
 *   spawn LOG PROGRAM ARG...            start a program in its own session, stdout+stderr to LOG
 *   ready MARKER                        print "MARKER <uptime>" on the console: the host waits for it
 *
 * A step that fails prints "kproto-init: <step>: <error>" on the console and the plan goes on (the
 * host then sees what is missing, e.g. SSH never answering, with this line in the console tail). After
 * the plan it reaps orphans forever. Doing this here instead of in a shell saves one exec per step
 * (sh, mount, ip, mkdir, cp: each 0.1-0.25 s under TCG).
 *
 * The kernel passes argv[1..] from the words after "--" on its command line.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define NINEP_OPTS "trans=virtio,version=9p2000.L,msize=512000"
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

static int ifup(const char *name, const char *cidr)
{
	struct ifreq ifr;
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), rc = -1;

	if (s < 0)
		return -1;
	memset(&ifr, 0, sizeof(ifr));
	strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
	if (cidr) {
		char addr[64];
		const char *slash = strchr(cidr, '/');
		int prefix = slash ? atoi(slash + 1) : 32;
		size_t len = slash ? (size_t)(slash - cidr) : strlen(cidr);
		struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;

		if (len >= sizeof(addr) || prefix < 0 || prefix > 32)
			goto out;
		memcpy(addr, cidr, len);
		addr[len] = 0;
		sin->sin_family = AF_INET;
		if (inet_pton(AF_INET, addr, &sin->sin_addr) != 1) {
			errno = EINVAL;
			goto out;
		}
		if (ioctl(s, SIOCSIFADDR, &ifr))
			goto out;
		sin->sin_addr.s_addr = htonl(prefix ? 0xffffffffu << (32 - prefix) : 0);
		if (ioctl(s, SIOCSIFNETMASK, &ifr))
			goto out;
	}
	if (ioctl(s, SIOCGIFFLAGS, &ifr))
		goto out;
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	rc = ioctl(s, SIOCSIFFLAGS, &ifr);
out:
	close(s);
	return rc;
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
	} else if (!strcmp(w[0], "ifup") && (n == 2 || n == 3)) {
		if (ifup(w[1], n == 3 ? w[2] : NULL))
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
	if (mount("usr", "/usr", "9p", MS_RDONLY, NINEP_OPTS ",cache=loose"))
		die("cannot mount the host's /usr (9p tag usr) on", "/usr");
	if (mount("tmpfs", "/mnt", "tmpfs", 0, "mode=755"))
		die("cannot mount a tmpfs on", "/mnt");
	if (mkdir(argv[2], 0755) && errno != EEXIST)
		die("cannot create", argv[2]);
	if (mount(argv[1], argv[2], "9p", 0, NINEP_OPTS))
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
