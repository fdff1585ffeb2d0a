/* kproto fuzz: the generic file-operation interpreter (static; runs on the host, in the guest, on the
 * reference overlay). Not a guest test: it lives in guest_tests/fuzz/ so the suite builder skips it.
 *
 *   opinterp setup SPEC LOWER UPPER NSLOTS   populate slots s0000.. in the layers from SPEC
 *   opinterp run BASE FIRST [SEQFILE]        run sequences ("---" separated, stdin by default), the
 *                                            i-th in BASE/s<FIRST+i> (4 digits), each in a fresh child
 *
 * run output per sequence:  "=== seq I"  then one "K: RESULT" line per op (fmt.h), then
 * "=== end I exit=N" or "=== end I signal=NAME" (SIGALRM after 10 s: the sequence hung).
 *
 * SPEC lines: "L|U file PATH MODE HEX", "L|U dir PATH MODE -", "L|U symlink PATH 0777 TARGET",
 * "L|U whiteout PATH 0 -", "L|U xattr PATH NAME HEX". When LOWER and UPPER are the same directory
 * (the plain, non-overlay target), a whiteout removes the path instead.
 *
 * Ops, one per line, tokens separated by single spaces (DATA has no spaces). The operation table is
 * rig/fuzz/ops.py (grammar, generation, C emission); a new op is a row there and a case in do_op() here
 * (tests/fuzz/test_fuzz_ops.py checks that both print the same):
 *   open S PATH FLAGS (RDONLY|WRONLY|RDWR + CREAT TRUNC APPEND EXCL DIRECTORY NOFOLLOW, "|"-joined;
 *   an open into a used slot closes it first)  close S  read S N  pread S N OFF  write S DATA
 *   pwrite S OFF DATA  mmap M S r|rw shared|private (4096 bytes at 0)  mread M OFF N  mwrite M OFF DATA
 *   msync M  munmap M  truncate P LEN  ftruncate S LEN  fstat S  stat P  lstat P  rename A B  unlink P
 *   link A B  symlink TARGET P  readlink P  mkdir P MODE  rmdir P  readdir P  chmod P MODE
 *   utimens P SEC  setxattr P NAME VALUE  getxattr P NAME  listxattr P  flock S sh|ex|un (LOCK_NB)
 *   fsync S
 */
#include "fmt.h"
#include <sys/sysmacros.h>
#include <sys/wait.h>

#define NFD 8
#define NMAP 8
#define MAPLEN 4096

static int fd[NFD];
static char *map[NMAP];

static int slot(const char *s, int max)
{
	int v = atoi(s);
	return v >= 0 && v < max ? v : 0;
}

static int open_flags(const char *s)
{
	int f = 0;
	char buf[256];
	snprintf(buf, sizeof buf, "%s", s);
	for (char *t = strtok(buf, "|"); t; t = strtok(NULL, "|")) {
		if (!strcmp(t, "RDONLY")) f |= O_RDONLY;
		else if (!strcmp(t, "WRONLY")) f |= O_WRONLY;
		else if (!strcmp(t, "RDWR")) f |= O_RDWR;
		else if (!strcmp(t, "CREAT")) f |= O_CREAT;
		else if (!strcmp(t, "TRUNC")) f |= O_TRUNC;
		else if (!strcmp(t, "APPEND")) f |= O_APPEND;
		else if (!strcmp(t, "EXCL")) f |= O_EXCL;
		else if (!strcmp(t, "DIRECTORY")) f |= O_DIRECTORY;
		else if (!strcmp(t, "NOFOLLOW")) f |= O_NOFOLLOW;
	}
	return f;
}

/* Execute one op; the result goes to LINE. */
static void do_op(char **a, int n)
{
	const char *op = a[0];
	struct stat st;
	long r;
#define NEED(k) do { if (n < (k) + 1) { snprintf(LINE, sizeof LINE, "badop"); return; } } while (0)
	if (!strcmp(op, "open")) {
		NEED(3);
		int s = slot(a[1], NFD);
		if (fd[s] >= 0)
			close(fd[s]);
		fd[s] = open(a[2], open_flags(a[3]), 0644);
		fmt_rc(fd[s]);
	} else if (!strcmp(op, "close")) {
		NEED(1);
		int s = slot(a[1], NFD);
		r = close(fd[s]);
		fmt_rc(r);
		fd[s] = -1;
	} else if (!strcmp(op, "read")) {
		NEED(2);
		long len = atol(a[2]);
		fmt_data(read(fd[slot(a[1], NFD)], BUF, len > 2048 ? 2048 : len));
	} else if (!strcmp(op, "pread")) {
		NEED(3);
		long len = atol(a[2]);
		fmt_data(pread(fd[slot(a[1], NFD)], BUF, len > 2048 ? 2048 : len, atol(a[3])));
	} else if (!strcmp(op, "write")) {
		NEED(2);
		fmt_n(write(fd[slot(a[1], NFD)], a[2], strlen(a[2])));
	} else if (!strcmp(op, "pwrite")) {
		NEED(3);
		fmt_n(pwrite(fd[slot(a[1], NFD)], a[3], strlen(a[3]), atol(a[2])));
	} else if (!strcmp(op, "mmap")) {
		NEED(4);
		int m = slot(a[1], NMAP);
		if (map[m])
			munmap(map[m], MAPLEN);
		int prot = !strcmp(a[3], "rw") ? PROT_READ | PROT_WRITE : PROT_READ;
		int fl = !strcmp(a[4], "private") ? MAP_PRIVATE : MAP_SHARED;
		char *p = mmap(NULL, MAPLEN, prot, fl, fd[slot(a[2], NFD)], 0);
		fmt_rc(p == MAP_FAILED ? -1 : 0);
		map[m] = p == MAP_FAILED ? NULL : p;
	} else if (!strcmp(op, "mread")) {
		NEED(3);
		long off = atol(a[2]), len = atol(a[3]);
		if (off < 0 || off >= MAPLEN) off = 0;
		if (len < 0 || off + len > MAPLEN) len = MAPLEN - off;
		fmt_mread(map[slot(a[1], NMAP)], off, len);
	} else if (!strcmp(op, "mwrite")) {
		NEED(3);
		long off = atol(a[2]);
		if (off < 0 || off + (long)strlen(a[3]) > MAPLEN) off = 0;
		fmt_mwrite(map[slot(a[1], NMAP)], off, a[3]);
	} else if (!strcmp(op, "msync")) {
		NEED(1);
		char *p = map[slot(a[1], NMAP)];
		if (!p)
			snprintf(LINE, sizeof LINE, "nomap");
		else
			fmt_rc(msync(p, MAPLEN, MS_SYNC));
	} else if (!strcmp(op, "munmap")) {
		NEED(1);
		int m = slot(a[1], NMAP);
		if (!map[m]) {
			snprintf(LINE, sizeof LINE, "nomap");
		} else {
			fmt_rc(munmap(map[m], MAPLEN));
			map[m] = NULL;
		}
	} else if (!strcmp(op, "truncate")) {
		NEED(2);
		fmt_rc(truncate(a[1], atol(a[2])));
	} else if (!strcmp(op, "ftruncate")) {
		NEED(2);
		fmt_rc(ftruncate(fd[slot(a[1], NFD)], atol(a[2])));
	} else if (!strcmp(op, "fstat")) {
		NEED(1);
		r = fstat(fd[slot(a[1], NFD)], &st);
		fmt_stat(r, &st);
	} else if (!strcmp(op, "stat")) {
		NEED(1);
		r = stat(a[1], &st);
		fmt_stat(r, &st);
	} else if (!strcmp(op, "lstat")) {
		NEED(1);
		r = lstat(a[1], &st);
		fmt_stat(r, &st);
	} else if (!strcmp(op, "rename")) {
		NEED(2);
		fmt_rc(rename(a[1], a[2]));
	} else if (!strcmp(op, "unlink")) {
		NEED(1);
		fmt_rc(unlink(a[1]));
	} else if (!strcmp(op, "link")) {
		NEED(2);
		fmt_rc(link(a[1], a[2]));
	} else if (!strcmp(op, "symlink")) {
		NEED(2);
		fmt_rc(symlink(a[1], a[2]));
	} else if (!strcmp(op, "readlink")) {
		NEED(1);
		fmt_data(readlink(a[1], BUF, 2048));
	} else if (!strcmp(op, "mkdir")) {
		NEED(2);
		fmt_rc(mkdir(a[1], strtol(a[2], NULL, 8)));
	} else if (!strcmp(op, "rmdir")) {
		NEED(1);
		fmt_rc(rmdir(a[1]));
	} else if (!strcmp(op, "readdir")) {
		NEED(1);
		fmt_readdir(a[1]);
	} else if (!strcmp(op, "chmod")) {
		NEED(2);
		fmt_rc(chmod(a[1], strtol(a[2], NULL, 8)));
	} else if (!strcmp(op, "utimens")) {
		NEED(2);
		struct timespec ts[2] = {{atol(a[2]), 0}, {atol(a[2]), 0}};
		fmt_rc(utimensat(AT_FDCWD, a[1], ts, 0));
	} else if (!strcmp(op, "setxattr")) {
		NEED(3);
		fmt_rc(setxattr(a[1], a[2], a[3], strlen(a[3]), 0));
	} else if (!strcmp(op, "getxattr")) {
		NEED(2);
		fmt_data(getxattr(a[1], a[2], BUF, 2048));
	} else if (!strcmp(op, "listxattr")) {
		NEED(1);
		fmt_listxattr(a[1]);
	} else if (!strcmp(op, "flock")) {
		NEED(2);
		int how = !strcmp(a[2], "ex") ? LOCK_EX : !strcmp(a[2], "un") ? LOCK_UN : LOCK_SH;
		fmt_rc(flock(fd[slot(a[1], NFD)], how | LOCK_NB));
	} else if (!strcmp(op, "fsync")) {
		NEED(1);
		fmt_rc(fsync(fd[slot(a[1], NFD)]));
	} else {
		snprintf(LINE, sizeof LINE, "badop");
	}
}

static int split(char *line, char **a, int max)
{
	int n = 0;
	for (char *t = strtok(line, " \t\r\n"); t && n < max; t = strtok(NULL, " \t\r\n"))
		a[n++] = t;
	return n;
}

/* Run one sequence (lines[0..n)) in DIR, in this (child) process. */
static void run_seq(const char *dir, char **lines, int n)
{
	for (int i = 0; i < NFD; i++)
		fd[i] = -1;
	fault_guard_init();
	alarm(10);
	if (chdir(dir) < 0) {
		printf("chdir %s: %s\n", dir, ename(errno));
		fflush(stdout);
		_exit(3);
	}
	for (int k = 0; k < n; k++) {
		char buf[4096], *a[16];
		snprintf(buf, sizeof buf, "%s", lines[k]);
		int na = split(buf, a, 16);
		if (na == 0)
			snprintf(LINE, sizeof LINE, "badop");
		else
			do_op(a, na);
		emit(k + 1);
	}
	/* _exit, not exit: exit() would lseek the shared SEQFILE offset back to the child's read
	 * position (glibc syncs input streams at exit), and the parent would read the rest twice */
	fflush(stdout);
	_exit(0);
}

static int cmd_run(const char *base, int first, FILE *in)
{
	char *lines[512];
	int n = 0, seq = 0, more = 1;
	char buf[4096];
	while (more) {
		more = fgets(buf, sizeof buf, in) != NULL;
		if (more && strcmp(buf, "---\n") && strcmp(buf, "---")) {
			if (n < 512)
				lines[n++] = strdup(buf);
			continue;
		}
		if (!more && n == 0)
			break;
		char dir[4096];
		snprintf(dir, sizeof dir, "%s/s%04d", base, first + seq);
		printf("=== seq %d\n", seq);
		fflush(stdout);
		pid_t pid = fork();
		if (pid == 0)
			run_seq(dir, lines, n);
		int status = 0;
		waitpid(pid, &status, 0);
		if (WIFSIGNALED(status))
			printf("=== end %d signal=%s\n", seq, sigabbrev_np(WTERMSIG(status)) ? sigabbrev_np(WTERMSIG(status)) : "?");
		else
			printf("=== end %d exit=%d\n", seq, WEXITSTATUS(status));
		fflush(stdout);
		for (int i = 0; i < n; i++)
			free(lines[i]);
		n = 0;
		seq++;
	}
	return 0;
}

/* ------------------------------------------------------------------ setup */
static void mkparents(const char *path)
{
	char buf[8300];
	snprintf(buf, sizeof buf, "%s", path);
	for (char *p = buf + 1; *p; p++)
		if (*p == '/') {
			*p = 0;
			mkdir(buf, 0755);
			*p = '/';
		}
}

static int unhex(const char *h, char *out)
{
	int n = 0;
	if (!strcmp(h, "-"))
		return 0;
	for (; h[0] && h[1]; h += 2) {
		unsigned v;
		sscanf(h, "%2x", &v);
		out[n++] = v;
	}
	return n;
}

#define OLD_TIME 946684800

static int apply(const char *root, char **a, int na, int same)
{
	char path[8300];
	char data[8192];
	if (na < 5)
		return -1;
	snprintf(path, sizeof path, "%s/%s", root, a[2]);
	mkparents(path);
	mode_t mode = strtol(a[3], NULL, 8);
	struct timespec ts[2] = {{OLD_TIME, 0}, {OLD_TIME, 0}};
	if (!strcmp(a[1], "file")) {
		int f = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
		int len = unhex(a[4], data);
		if (f < 0 || write(f, data, len) != len)
			return -1;
		close(f);
		chmod(path, mode);
	} else if (!strcmp(a[1], "dir")) {
		if (mkdir(path, mode) < 0 && errno != EEXIST)
			return -1;
		chmod(path, mode);
	} else if (!strcmp(a[1], "symlink")) {
		if (symlink(a[4], path) < 0)
			return -1;
	} else if (!strcmp(a[1], "whiteout")) {
		if (same)
			return unlink(path) < 0 && rmdir(path) < 0 ? -1 : 0;
		if (mknod(path, S_IFCHR | 0000, makedev(0, 0)) < 0)
			return -1;
	} else if (!strcmp(a[1], "xattr")) {
		int len = unhex(a[4], data);
		return lsetxattr(path, a[3], data, len, 0);
	} else {
		return -1;
	}
	utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW);
	return 0;
}

static int cmd_setup(const char *spec, const char *lower, const char *upper, int nslots)
{
	FILE *f = fopen(spec, "r");
	if (!f) {
		perror(spec);
		return 2;
	}
	char *lines[256];
	int n = 0;
	char buf[8192];
	while (n < 256 && fgets(buf, sizeof buf, f))
		if (buf[0] != '#' && buf[0] != '\n')
			lines[n++] = strdup(buf);
	fclose(f);
	int same = !strcmp(lower, upper);
	mkdir(lower, 0755);
	mkdir(upper, 0755);
	for (int s = 0; s < nslots; s++) {
		char lroot[4096], uroot[4096];
		snprintf(lroot, sizeof lroot, "%s/s%04d", lower, s);
		snprintf(uroot, sizeof uroot, "%s/s%04d", upper, s);
		mkdir(lroot, 0755);
		mkdir(uroot, 0755);
		for (int pass = 0; pass < 2; pass++)     /* lower entries first, then upper */
			for (int i = 0; i < n; i++) {
				char tmp[8192], *a[8];
				snprintf(tmp, sizeof tmp, "%s", lines[i]);
				int na = split(tmp, a, 8);
				if (na < 1 || a[0][0] != (pass ? 'U' : 'L'))
					continue;
				if (apply(pass ? uroot : lroot, a, na, same) < 0) {
					fprintf(stderr, "setup: %s: %s", ename(errno), lines[i]);
					return 1;
				}
			}
		/* directory times last, so entries created inside do not change them */
		for (int i = 0; i < n; i++) {
			char tmp[8192], *a[8], path[8300];
			snprintf(tmp, sizeof tmp, "%s", lines[i]);
			int na = split(tmp, a, 8);
			if (na < 3 || strcmp(a[1], "dir"))
				continue;
			snprintf(path, sizeof path, "%s/%s", a[0][0] == 'U' ? uroot : lroot, a[2]);
			struct timespec ts[2] = {{OLD_TIME, 0}, {OLD_TIME, 0}};
			utimensat(AT_FDCWD, path, ts, 0);
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOFBF, 1 << 16);
	if (argc >= 6 && !strcmp(argv[1], "setup"))
		return cmd_setup(argv[2], argv[3], argv[4], atoi(argv[5]));
	if (argc >= 4 && !strcmp(argv[1], "run")) {
		FILE *in = stdin;
		if (argc >= 5 && !(in = fopen(argv[4], "r"))) {
			perror(argv[4]);
			return 2;
		}
		return cmd_run(argv[2], atoi(argv[3]), in);
	}
	fprintf(stderr, "usage: %s setup SPEC LOWER UPPER NSLOTS | run BASE FIRST [SEQFILE]\n", argv[0]);
	return 2;
}
