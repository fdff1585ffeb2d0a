/* kproto fuzz: normalised result lines, shared by the operation interpreter (opinterp.c) and inlined
 * verbatim into every C reproducer and guest test rig/fuzz/emit.py writes, so all print exactly the same thing.
 *
 * Each operation formats its result into LINE; emit(k) prints "k: LINE".
 *   - a syscall result: "ok" or the errno name ("ENOENT")
 *   - byte counts:      "ok n=3"
 *   - data:             "ok n=3 data=bar" (printable text, \n \t \\ escaped) or data=hex:00ff..
 *   - stat:             "ok type=reg mode=0644 size=15 nlink=1 ino=i1 mtime=unchanged"
 *                       ino is a label (i1, i2, ... in order of first sight), never the number;
 *                       mtime is first/changed/unchanged vs the last stat of the same label;
 *                       size only for files and symlinks, nlink only for non-directories
 *   - names:            "ok a,b,c" sorted (readdir without . and ..; listxattr without security.*)
 *   - a fault in a mapping: "SIGBUS" / "SIGSEGV"
 */
#ifndef KPROTO_FUZZ_FMT_H
#define KPROTO_FUZZ_FMT_H
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>

#define U_ __attribute__((unused))
static char LINE[16384];
static char BUF[8192];

static U_ const char *ename(int e)
{
	const char *n = strerrorname_np(e);
	return n ? n : "E?";
}

/* KPROTO_FUZZ_KEYED: print guest-test observations "op01=LINE" (guest_tests/README.md) instead */
static U_ void emit(int k)
{
#ifdef KPROTO_FUZZ_KEYED
	printf("op%02d=%s\n", k, LINE);
#else
	printf("%d: %s\n", k, LINE);
#endif
	fflush(stdout);
}

/* call right after the syscall: errno is read */
static U_ void fmt_rc(long rc)
{
	if (rc < 0)
		snprintf(LINE, sizeof LINE, "%s", ename(errno));
	else
		snprintf(LINE, sizeof LINE, "ok");
}

static U_ void fmt_n(long rc)
{
	if (rc < 0)
		snprintf(LINE, sizeof LINE, "%s", ename(errno));
	else
		snprintf(LINE, sizeof LINE, "ok n=%ld", rc);
}

static U_ void esc(char *o, const unsigned char *d, long len)
{
	int text = 1;
	for (long i = 0; i < len; i++)
		if (!((d[i] >= 32 && d[i] < 127) || d[i] == '\n' || d[i] == '\t'))
			text = 0;
	if (!text) {
		o += sprintf(o, "hex:");
		for (long i = 0; i < len; i++)
			o += sprintf(o, "%02x", d[i]);
		return;
	}
	for (long i = 0; i < len; i++) {
		if (d[i] == '\n')
			o += sprintf(o, "\\n");
		else if (d[i] == '\t')
			o += sprintf(o, "\\t");
		else if (d[i] == '\\')
			o += sprintf(o, "\\\\");
		else
			*o++ = d[i];
	}
	*o = 0;
}

/* rc = bytes in BUF (read, pread, getxattr, readlink) */
static U_ void fmt_data(long rc)
{
	if (rc < 0) {
		snprintf(LINE, sizeof LINE, "%s", ename(errno));
		return;
	}
	int n = sprintf(LINE, "ok n=%ld data=", rc);
	esc(LINE + n, (const unsigned char *)BUF, rc > 2048 ? 2048 : rc);
}

static struct { dev_t dev; ino_t ino; struct timespec mtime; } SEEN[64];
static int NSEEN;

static U_ void fmt_stat(int rc, const struct stat *st)
{
	if (rc < 0) {
		snprintf(LINE, sizeof LINE, "%s", ename(errno));
		return;
	}
	const char *type = S_ISREG(st->st_mode) ? "reg" : S_ISDIR(st->st_mode) ? "dir" : S_ISLNK(st->st_mode) ? "lnk"
			 : S_ISCHR(st->st_mode) ? "chr" : S_ISFIFO(st->st_mode) ? "fifo" : "other";
	int l;
	const char *mt = "first";
	for (l = 0; l < NSEEN; l++)
		if (SEEN[l].dev == st->st_dev && SEEN[l].ino == st->st_ino)
			break;
	if (l == NSEEN && NSEEN < 64) {
		SEEN[l].dev = st->st_dev;
		SEEN[l].ino = st->st_ino;
		NSEEN++;
	} else if (l < 64) {
		mt = (SEEN[l].mtime.tv_sec == st->st_mtim.tv_sec && SEEN[l].mtime.tv_nsec == st->st_mtim.tv_nsec)
			     ? "unchanged" : "changed";
	}
	if (l < 64)
		SEEN[l].mtime = st->st_mtim;
	int n = sprintf(LINE, "ok type=%s mode=%04o", type, (unsigned)(st->st_mode & 07777));
	if (S_ISREG(st->st_mode) || S_ISLNK(st->st_mode))
		n += sprintf(LINE + n, " size=%lld", (long long)st->st_size);
	if (!S_ISDIR(st->st_mode))
		n += sprintf(LINE + n, " nlink=%lu", (unsigned long)st->st_nlink);
	sprintf(LINE + n, " ino=i%d mtime=%s", l + 1, mt);
}

static U_ int cmpname(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static U_ void fmt_names(char **names, int n)
{
	qsort(names, n, sizeof(char *), cmpname);
	int o = sprintf(LINE, "ok ");
	for (int i = 0; i < n && o < (int)sizeof LINE - 300; i++)
		o += sprintf(LINE + o, "%s%s", i ? "," : "", names[i]);
}

static U_ void fmt_readdir(const char *path)
{
	char *names[256];
	int n = 0;
	DIR *d = opendir(path);
	if (!d) {
		fmt_rc(-1);
		return;
	}
	struct dirent *de;
	while ((de = readdir(d)) && n < 256)
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			names[n++] = strdup(de->d_name);
	closedir(d);
	fmt_names(names, n);
	for (int i = 0; i < n; i++)
		free(names[i]);
}

static U_ void fmt_listxattr(const char *path)
{
	char *names[128];
	int n = 0;
	ssize_t len = llistxattr(path, BUF, sizeof BUF);
	if (len < 0) {
		fmt_rc(-1);
		return;
	}
	for (char *p = BUF; p < BUF + len && n < 128; p += strlen(p) + 1)
		if (strncmp(p, "security.", 9) && strncmp(p, "trusted.overlay.", 16) && strncmp(p, "user.overlay.", 13))
			names[n++] = p;
	fmt_names(names, n);
}

/* Accesses through a mapping: a fault is a result (SIGBUS beyond EOF, SIGSEGV on a read-only map). */
static sigjmp_buf FAULT_JMP;
static volatile int FAULT_SIG;

static U_ void on_fault(int sig)
{
	FAULT_SIG = sig;
	siglongjmp(FAULT_JMP, 1);
}

static U_ void fault_guard_init(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_fault;
	sa.sa_flags = SA_NODEFER;
	sigaction(SIGBUS, &sa, NULL);
	sigaction(SIGSEGV, &sa, NULL);
}

static U_ void fmt_mread(const char *map, long off, long len)
{
	if (!map || map == MAP_FAILED) {
		snprintf(LINE, sizeof LINE, "nomap");
		return;
	}
	if (sigsetjmp(FAULT_JMP, 1)) {
		snprintf(LINE, sizeof LINE, "%s", FAULT_SIG == SIGBUS ? "SIGBUS" : "SIGSEGV");
		return;
	}
	memcpy(BUF, map + off, len);
	int n = sprintf(LINE, "ok data=");
	esc(LINE + n, (const unsigned char *)BUF, len);
}

static U_ void fmt_mwrite(char *map, long off, const char *data)
{
	if (!map || map == MAP_FAILED) {
		snprintf(LINE, sizeof LINE, "nomap");
		return;
	}
	if (sigsetjmp(FAULT_JMP, 1)) {
		snprintf(LINE, sizeof LINE, "%s", FAULT_SIG == SIGBUS ? "SIGBUS" : "SIGSEGV");
		return;
	}
	memcpy(map + off, data, strlen(data));
	snprintf(LINE, sizeof LINE, "ok");
}

#endif
