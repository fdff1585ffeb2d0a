/*
 * ovlbench: overlay read-path micro-benchmarks for `kproto bench`.
 *
 *   ovlbench prepare LOWERDIR          create the lower-layer files (before the overlay is mounted)
 *   ovlbench run MNT [-d MS] [-n]      run every metric on the mounted overlay MNT
 *
 * `run` prints one line per metric:  name=value unit higher|lower   ("higher": higher is better).
 * Files named *_lower live on the lower layer and are never copied up (read-only opens, private
 * mappings); *_upper files are created through the mount, so they live on the upper layer.
 * Each time-boxed metric warms up once, then loops for -d milliseconds (default 200).
 * -n skips the cold-cache metric (it writes /proc/sys/vm/drop_caches, which is rude on a shared host).
 *
 * Static C, no dependencies beyond libc; built by rig/bench/programs.py with gcc -static -O2.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BIG_SIZE   (4u << 20)     /* sequential / random / mmap reads */
#define SMALL_SIZE 4096u          /* open/read/close */
#define STALE_SIZE (256u << 10)   /* read via an fd opened before copy-up */
#define FIRST_SIZE (1u << 20)     /* first shared mmap of a lower file */
#define FIRST_N    6
#define FIRST_SETS 8             /* a fresh set of FIRST_N files per run within one boot */
#define FIRST_STATE "/tmp/ovlbench-first-set"   /* per boot (the guest's /tmp); OVLBENCH_STATE: another file */
#define COLD_N     3
#define SEQ_BUF    (64u << 10)

static double duration_s = 0.2;
static char *mnt;
static char buf[SEQ_BUF] __attribute__((aligned(4096)));

static void die(const char *what, const char *path)
{
	fprintf(stderr, "ovlbench: %s %s: %s\n", what, path ? path : "", strerror(errno));
	exit(2);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static char *path(const char *dir, const char *name)
{
	static char p[4][4096];
	static int i;

	i = (i + 1) % 4;
	snprintf(p[i], sizeof(p[i]), "%s/%s", dir, name);
	return p[i];
}

static void make_file(const char *p, size_t size)
{
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	size_t done = 0;

	if (fd < 0)
		die("create", p);
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (char)(i * 131 + 7);
	while (done < size) {
		size_t n = size - done < sizeof(buf) ? size - done : sizeof(buf);
		ssize_t w = write(fd, buf, n);

		if (w <= 0)
			die("write", p);
		done += w;
	}
	if (close(fd))
		die("close", p);
}

static int xopen(const char *p, int flags)
{
	int fd = open(p, flags);

	if (fd < 0)
		die("open", p);
	return fd;
}

static size_t read_all(int fd)
{
	size_t total = 0;
	ssize_t r;

	while ((r = read(fd, buf, sizeof(buf))) > 0)
		total += r;
	if (r < 0)
		die("read", "");
	return total;
}

static void report(const char *name, double value, const char *unit, const char *better)
{
	printf("%s=%.6g %s %s\n", name, value, unit, better);
	fflush(stdout);
}

/* ---------------------------------------------------------------- metrics */

typedef double (*op_fn)(const char *file);   /* one iteration; returns bytes (or 1 for an op) */

/* Warm up once, then loop for duration_s; returns units per second. */
static double timed(op_fn op, const char *file)
{
	double units = 0, t0, t;

	op(file);
	t0 = now();
	do {
		units += op(file);
		t = now();
	} while (t - t0 < duration_s);
	return units / (t - t0);
}

static double op_seqread(const char *file)
{
	int fd = xopen(file, O_RDONLY);
	size_t n = read_all(fd);

	close(fd);
	return n;
}

static uint64_t rnd = 88172645463325252ull;

static uint64_t xorshift(void)
{
	rnd ^= rnd << 13;
	rnd ^= rnd >> 7;
	rnd ^= rnd << 17;
	return rnd;
}

static int rand_fd = -1;

static double op_pread_rand(const char *file)
{
	off_t off;
	int i;

	(void)file;
	for (i = 0; i < 64; i++) {
		off = (off_t)(xorshift() % (BIG_SIZE / 4096)) * 4096;
		if (pread(rand_fd, buf, 4096, off) != 4096)
			die("pread", file);
	}
	return 64;
}

static double op_open_read_close(const char *file)
{
	int fd = xopen(file, O_RDONLY);

	if (read(fd, buf, SMALL_SIZE) != SMALL_SIZE)
		die("read", file);
	close(fd);
	return 1;
}

static double op_stat(const char *file)
{
	struct stat st;
	int i;

	for (i = 0; i < 16; i++)
		if (stat(file, &st))
			die("stat", file);
	return 16;
}

static double op_mmap_read(const char *file)
{
	int fd = xopen(file, O_RDONLY);
	volatile uint64_t sum = 0;
	const uint64_t *p;
	size_t i;

	p = mmap(NULL, BIG_SIZE, PROT_READ, MAP_PRIVATE, fd, 0);
	if (p == MAP_FAILED)
		die("mmap", file);
	for (i = 0; i < BIG_SIZE / 8; i += 8)    /* one word per 64-byte line */
		sum += p[i];
	munmap((void *)p, BIG_SIZE);
	close(fd);
	return BIG_SIZE;
}

static int stale_fd = -1;
static off_t stale_off;

static double op_pread_stale(const char *file)
{
	int i;

	(void)file;
	for (i = 0; i < 16; i++) {
		if (pread(stale_fd, buf, 4096, stale_off) != 4096)
			die("pread stale fd", file);
		stale_off = (stale_off + 4096) % STALE_SIZE;
	}
	return 16;
}

static void drop_caches(void)
{
	int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);

	sync();
	if (fd < 0 || write(fd, "3", 1) != 1)
		die("drop_caches", "/proc/sys/vm/drop_caches");
	close(fd);
}

/* Sequential read after dropping the caches: tmpfs layers keep their data, so "cold" means the
 * overlay's dentries and inodes are gone and the open has to look them up again. */
static double seqread_cold(const char *file)
{
	double t = 0, t0;
	size_t bytes = 0;
	int i, fd;

	for (i = 0; i < COLD_N; i++) {
		drop_caches();
		t0 = now();
		fd = xopen(file, O_RDONLY);
		bytes += read_all(fd);
		close(fd);
		t += now() - t0;
	}
	return bytes / t;
}

/* Where the set rotation below is kept: FIRST_STATE in the guest, the run's own directory on the host
 * (rig/bench/sides.py HostSide sets OVLBENCH_STATE), so a host run leaves nothing in the host's /tmp. */
static const char *first_state(void)
{
	const char *p = getenv("OVLBENCH_STATE");

	return p && *p ? p : FIRST_STATE;
}

/* First MAP_SHARED mapping of lower files, touched page by page: a kernel that copies up on
 * shared mmap pays the copy-up here. Mean microseconds per file. */
static double mmap_shared_first(void)
{
	double t = 0, t0;
	char name[64];
	int i, fd, set = 0;
	FILE *st = fopen(first_state(), "r");

	/* Every run of one boot must map files nobody mapped before: a kernel that copies up on a
	 * shared mmap has already copied up the previous run's files, so reusing them would measure
	 * mapping upper files (seen: a bogus -19 % "improvement" with the copy-up patch). */
	if (st) {
		if (fscanf(st, "%d", &set) != 1)
			set = 0;
		fclose(st);
	}
	st = fopen(first_state(), "w");
	if (st) {
		fprintf(st, "%d\n", set + 1);
		fclose(st);
	}
	set %= FIRST_SETS;
	for (i = set * FIRST_N; i < (set + 1) * FIRST_N; i++) {
		const char *p;
		volatile char c = 0;
		char *m;
		size_t off;

		snprintf(name, sizeof(name), "first%d_lower", i);
		p = path(mnt, name);
		t0 = now();
		fd = xopen(p, O_RDONLY);
		m = mmap(NULL, FIRST_SIZE, PROT_READ, MAP_SHARED, fd, 0);
		if (m == MAP_FAILED)
			die("mmap shared", p);
		for (off = 0; off < FIRST_SIZE; off += 4096)
			c += m[off];
		munmap(m, FIRST_SIZE);
		close(fd);
		t += now() - t0;
	}
	return t / FIRST_N * 1e6;
}

static void setup_stale_fd(void)
{
	const char *p = path(mnt, "stale_lower");
	int wfd;

	stale_fd = xopen(p, O_RDONLY);
	wfd = xopen(p, O_WRONLY);     /* copies the file up */
	if (write(wfd, "x", 1) != 1)
		die("write", p);
	close(wfd);
}

static int cmd_prepare(const char *dir)
{
	char name[64];
	int i;

	make_file(path(dir, "big_lower"), BIG_SIZE);
	make_file(path(dir, "small_lower"), SMALL_SIZE);
	make_file(path(dir, "stale_lower"), STALE_SIZE);
	for (i = 0; i < FIRST_N * FIRST_SETS; i++) {
		snprintf(name, sizeof(name), "first%d_lower", i);
		make_file(path(dir, name), FIRST_SIZE);
	}
	return 0;
}

static int cmd_run(int cold)
{
	static const char *layers[] = {"lower", "upper"};
	char big[64], small[64], name[64];
	int l;

	/* upper-layer files: created through the overlay */
	make_file(path(mnt, "big_upper"), BIG_SIZE);
	make_file(path(mnt, "small_upper"), SMALL_SIZE);

	for (l = 0; l < 2; l++) {
		const char *ly = layers[l];
		char *bigp, *smallp;

		snprintf(big, sizeof(big), "big_%s", ly);
		snprintf(small, sizeof(small), "small_%s", ly);
		bigp = path(mnt, big);
		smallp = path(mnt, small);

		snprintf(name, sizeof(name), "seqread_hot_%s", ly);
		report(name, timed(op_seqread, bigp) / 1e6, "MB/s", "higher");
		if (cold) {
			snprintf(name, sizeof(name), "seqread_cold_%s", ly);
			report(name, seqread_cold(bigp) / 1e6, "MB/s", "higher");
		}
		rand_fd = xopen(bigp, O_RDONLY);
		snprintf(name, sizeof(name), "pread4k_rand_%s", ly);
		report(name, timed(op_pread_rand, bigp) / 1e3, "kops/s", "higher");
		close(rand_fd);
		snprintf(name, sizeof(name), "open_read_close_%s", ly);
		report(name, timed(op_open_read_close, smallp) / 1e3, "kops/s", "higher");
		snprintf(name, sizeof(name), "stat_%s", ly);
		report(name, timed(op_stat, smallp) / 1e3, "kops/s", "higher");
		snprintf(name, sizeof(name), "mmap_read_%s", ly);
		report(name, timed(op_mmap_read, bigp) / 1e6, "MB/s", "higher");
	}
	setup_stale_fd();
	report("pread4k_fd_before_copyup", timed(op_pread_stale, NULL) / 1e3, "kops/s", "higher");
	close(stale_fd);
	report("mmap_shared_first_lower", mmap_shared_first(), "us", "lower");
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: ovlbench prepare LOWERDIR | ovlbench run MNT [-d MS] [-n]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	int cold = 1, i;

	if (argc < 3)
		usage();
	if (!strcmp(argv[1], "prepare"))
		return cmd_prepare(argv[2]);
	if (strcmp(argv[1], "run"))
		usage();
	mnt = argv[2];
	for (i = 3; i < argc; i++) {
		if (!strcmp(argv[i], "-n"))
			cold = 0;
		else if (!strcmp(argv[i], "-d") && i + 1 < argc)
			duration_s = atof(argv[++i]) / 1000.0;
		else
			usage();
	}
	return cmd_run(cold);
}
