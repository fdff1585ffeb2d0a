/* Shared helpers for the guest tests. See README.md for the observation format.
 *
 * Every test: int main(int argc, char **argv) { init(argc, argv); ... return 0; }
 * Paths are built from the merged dir given as argv[1]: P("dir/file").
 */
#ifndef KPROTO_GUEST_COMMON_H
#define KPROTO_GUEST_COMMON_H

#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <sys/sendfile.h>
#include <unistd.h>

static __attribute__((unused)) const char *MERGED = ".";

/* Path under the merged dir; a small ring of buffers so several P() can be used in one call. */
static __attribute__((unused)) const char *P(const char *rel)
{
	static char bufs[8][4096];
	static int i;
	char *b = bufs[i++ & 7];
	snprintf(b, 4096, "%s/%s", MERGED, rel);
	return b;
}

static __attribute__((unused)) const char *errname(int e)
{
	const char *n = strerrorname_np(e);
	return n ? n : "E?";
}

static __attribute__((unused)) void diag(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("# ", stdout);
	vfprintf(stdout, fmt, ap);
	fputc('\n', stdout);
	va_end(ap);
	fflush(stdout);
}

static __attribute__((unused)) void obs_str(const char *key, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("%s=", key);
	vprintf(fmt, ap);
	putchar('\n');
	va_end(ap);
	fflush(stdout);
}

static __attribute__((unused)) void obs_int(const char *key, long long v) { obs_str(key, "%lld", v); }
static __attribute__((unused)) void obs_mode(const char *key, mode_t m) { obs_str(key, "%04o", (unsigned)(m & 07777)); }
static __attribute__((unused)) void obs_yes(const char *key, int cond) { obs_str(key, "%s", cond ? "yes" : "no"); }

/* A syscall result: "ok" when rc >= 0, else the errno name. Returns rc. Call right after the syscall. */
static __attribute__((unused)) long obs_rc(const char *key, long rc)
{
	int e = errno;
	if (rc >= 0)
		obs_str(key, "ok");
	else
		obs_str(key, "%s", errname(e));
	errno = e;
	return rc;
}

/* Data: printable text (with \n, \t, \\ escaped) or hex:... when anything else is in it. */
static __attribute__((unused)) void obs_data(const char *key, const void *data, size_t len)
{
	const unsigned char *d = data;
	int text = 1;
	for (size_t i = 0; i < len; i++)
		if (!(isprint(d[i]) || d[i] == '\n' || d[i] == '\t'))
			text = 0;
	printf("%s=", key);
	if (text) {
		for (size_t i = 0; i < len; i++) {
			if (d[i] == '\n')
				fputs("\\n", stdout);
			else if (d[i] == '\t')
				fputs("\\t", stdout);
			else if (d[i] == '\\')
				fputs("\\\\", stdout);
			else
				putchar(d[i]);
		}
	} else {
		fputs("hex:", stdout);
		for (size_t i = 0; i < len; i++)
			printf("%02x", d[i]);
	}
	putchar('\n');
	fflush(stdout);
}

static __attribute__((unused)) int cmpstr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Sorted comma-separated list. NAMES is sorted in place. */
static __attribute__((unused)) void obs_list(const char *key, char **names, int n)
{
	qsort(names, n, sizeof(char *), cmpstr);
	printf("%s=", key);
	for (int i = 0; i < n; i++)
		printf("%s%s", i ? "," : "", names[i]);
	putchar('\n');
	fflush(stdout);
}

/* Fatal: print what went wrong as an observation and exit 1. */
static __attribute__((unused)) void die(const char *what)
{
	int e = errno;
	obs_str("fatal", "%s: %s", what, errname(e));
	exit(1);
}

static __attribute__((unused)) int xopen(const char *path, int flags)
{
	int fd = open(path, flags, 0644);
	if (fd < 0)
		die(path);
	return fd;
}

static __attribute__((unused)) void xwrite(int fd, const char *s)
{
	size_t n = strlen(s);
	if (write(fd, s, n) != (ssize_t)n)
		die("write");
}

/* Read up to max-1 bytes from offset 0 with pread; NUL-terminates; returns the byte count or -1. */
static __attribute__((unused)) ssize_t pread_all(int fd, char *buf, size_t max)
{
	size_t got = 0;
	while (got < max - 1) {
		ssize_t r = pread(fd, buf + got, max - 1 - got, got);
		if (r < 0)
			return -1;
		if (r == 0)
			break;
		got += r;
	}
	buf[got] = 0;
	return got;
}

/* Observe the whole content of the file at PATH (merged-relative) as seen through a fresh open. */
static __attribute__((unused)) void obs_file(const char *key, const char *rel)
{
	char buf[8192];
	int fd = open(P(rel), O_RDONLY);
	if (fd < 0) {
		obs_str(key, "%s", errname(errno));
		return;
	}
	ssize_t n = pread_all(fd, buf, sizeof buf);
	if (n < 0)
		obs_str(key, "%s", errname(errno));
	else
		obs_data(key, buf, n);
	close(fd);
}

/* Observe the content via an existing fd (pread from 0). */
static __attribute__((unused)) void obs_fd(const char *key, int fd)
{
	char buf[8192];
	ssize_t n = pread_all(fd, buf, sizeof buf);
	if (n < 0)
		obs_str(key, "%s", errname(errno));
	else
		obs_data(key, buf, n);
}

/* Sorted directory listing without . and .. */
static __attribute__((unused)) void obs_dir(const char *key, const char *rel)
{
	char *names[512];
	int n = 0;
	DIR *d = opendir(P(rel));
	if (!d) {
		obs_str(key, "%s", errname(errno));
		return;
	}
	struct dirent *de;
	while ((de = readdir(d)) && n < 512) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		names[n++] = strdup(de->d_name);
	}
	closedir(d);
	obs_list(key, names, n);
	for (int i = 0; i < n; i++)
		free(names[i]);
}

/* Sorted xattr names of PATH (or of fd when path is NULL), comma-separated; security.* left out
 * (LSM labels differ between hosts and guests). */
static __attribute__((unused)) void obs_xattr_list(const char *key, const char *path, int fd)
{
	char buf[4096];
	char *names[128];
	int n = 0;
	ssize_t len = path ? llistxattr(path, buf, sizeof buf) : flistxattr(fd, buf, sizeof buf);
	if (len < 0) {
		obs_str(key, "%s", errname(errno));
		return;
	}
	for (char *p = buf; p < buf + len && n < 128; p += strlen(p) + 1)
		if (strncmp(p, "security.", 9))
			names[n++] = p;
	obs_list(key, names, n);
}

/* Child-process helpers: a pipe used as a one-byte semaphore. */
static __attribute__((unused)) void sig_send(int fd, char c)
{
	if (write(fd, &c, 1) != 1)
		die("pipe write");
}

static __attribute__((unused)) char sig_wait(int fd)
{
	char c = 0;
	if (read(fd, &c, 1) != 1)
		die("pipe read");
	return c;
}

static __attribute__((unused)) void init(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s MERGED_DIR\n", argv[0]);
		exit(2);
	}
	MERGED = argv[1];
	signal(SIGPIPE, SIG_IGN);
}

/* The usual copy-up scenario: rofd opened on the lower file, then an O_WRONLY open (copy-up) and a
 * write of DATA at offset 0. Returns the rofd; *rwfd receives the write fd. */
static __attribute__((unused)) int rofd_then_copyup_write(const char *rel, const char *data, int *rwfd)
{
	int rofd = xopen(P(rel), O_RDONLY);
	int w = xopen(P(rel), O_WRONLY);
	if (pwrite(w, data, strlen(data), 0) != (ssize_t)strlen(data))
		die("pwrite");
	*rwfd = w;
	return rofd;
}


/* Read up to N bytes from FD the way HOW names: "pread", "readv", "sendfile" or "splice" (the last two
 * through a pipe), so the *_ro_fd_after_copyup tests share one body. */
static __attribute__((unused)) ssize_t read_fd_via(const char *how, int fd, char *buf, size_t n)
{
	ssize_t r = -1;
	if (!strcmp(how, "pread"))
		return pread(fd, buf, n, 0);
	if (!strcmp(how, "readv")) {
		struct iovec iov[2] = {{buf, 3}, {buf + 3, n - 3}};
		return readv(fd, iov, 2);
	}
	int pfd[2];
	if (pipe(pfd))
		die("pipe");
	if (!strcmp(how, "sendfile")) {
		off_t off = 0;
		r = sendfile(pfd[1], fd, &off, n);
	} else {
		loff_t off = 0;
		r = splice(fd, &off, pfd[1], NULL, n, 0);
	}
	if (r > 0)
		r = read(pfd[0], buf, r);
	close(pfd[0]);
	close(pfd[1]);
	return r;
}

#endif
