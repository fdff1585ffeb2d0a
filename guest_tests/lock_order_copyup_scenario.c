/* The lock-order scenario of the 2016 review, deterministic: fixed steps in a fixed order, run first
 * in a fresh boot (spec phase "lockdep"), so lockdep sees the same edges in the same order on every run
 * and reports the same cycle, closed by the same edge, every time.
 *
 * Lockdep reports a cycle only when every edge of it was recorded in the same boot, and some edges are
 * recorded only under contention: a fault taken by the kernel on a user address (fault_in_readable in
 * write(2), filldir64 in getdents64) takes mmap_lock with a trylock first, and a trylock records no
 * dependency; only when the trylock fails (another thread holds mmap_lock for write) does the blocking
 * mmap_read_lock record "held lock --> mmap_lock". In the RFC's thread that happened when a writer
 * raced a concurrent mmap (4 of 9 runs). Here a helper thread holds mmap_lock for write over and over
 * (mmap/munmap) while the main thread faults on an unmapped buffer (no VMA: the per-VMA lock cannot
 * serve it), until /proc/lockdep shows the edge (or a fixed number of tries where there is no lockdep).
 * On 6.12 steps 1 and 2 (upper dir) record their edge within 15-31 tries; /proc/lockdep costs ~18 ms to
 * read under TCG, so it is read every 16 tries at first and every 64 after that, up to MAX_TRIES.
 *
 * Steps and the edges they record (on a kernel whose overlay copies up on a shared mmap, as the RFC
 * does; on upstream 6.12 step 4 copies nothing up and no cycle closes):
 *   1. write(2) to an overlay file from an unmapped buffer under contention:
 *         &sb->s_type->i_mutex_key (upper fs file) --> &mm->mmap_lock     (fault_in_readable)
 *   2. getdents64 of a pure-upper and of a merged directory into an unmapped buffer under contention:
 *         &type->i_mutex_dir_key (upper fs) --> &mm->mmap_lock   (filldir64)
 *         &ovl_i_mutex_dir_key (overlay) --> &mm->mmap_lock      (not recorded on 6.12: every run takes
 *         all MAX_TRIES; kept in case a patch to overlay's readdir changes that)
 *   3. rename of a lower file within the merged directory: copy-up of the directory and the file:
 *         &ovl_i_lock_key --> &sb->s_type->i_mutex_key (SEEK_DATA on the lower file),
 *         &ovl_i_lock_key --> sb_writers --> &type->i_mutex_dir_key, lock_rename
 *   4. MAP_SHARED mmap of lower files through read-only fds: the RFC's copy-up under mmap_lock:
 *         &mm->mmap_lock --> &ovl_i_lock_key  -- closes the cycle with steps 1 and 3
 *   5. read through each mapping (observed: the data a mapping shows).
 *
 * Observations are only the deterministic outcome, identical on every correct target. */
#include "common.h"
#include <pthread.h>
#include <sys/syscall.h>
#include <time.h>

#define NFILES 4
#define BUF (64 * 1024)
#define MAX_TRIES 1000
#define NO_LOCKDEP_TRIES 300

static volatile int stop_helper;
static char *unmapped;

/* Edges "<class starting with PREFIX> -> &mm->mmap_lock" in /proc/lockdep; -1 without lockdep. */
static int mmap_lock_edges(const char *prefix)
{
	FILE *f = fopen("/proc/lockdep", "r");
	char line[512], cls[256] = "";
	int n = 0;
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = 0;
		if (strstr(line, " FD:")) {
			char *c = strrchr(line, ' ');
			snprintf(cls, sizeof(cls), "%s", c ? c + 1 : "");
		} else if (strstr(line, "] &mm->mmap_lock") && strncmp(cls, prefix, strlen(prefix)) == 0 &&
			   line[strlen(line) - 1] == 'k') {
			n++;
		}
	}
	fclose(f);
	return n;
}

#define HOLD (16 << 20)
static char *hold;

static void *helper(void *arg)
{
	(void)arg;
	/* mprotect() of a populated region walks all its page tables with mmap_lock held for write:
	 * long holds, again and again */
	for (int prot = PROT_READ; !stop_helper; prot ^= PROT_WRITE)
		mprotect(hold, HOLD, prot);
	mprotect(hold, HOLD, PROT_READ | PROT_WRITE);
	return NULL;
}

/* Run OP under mmap_lock contention until lockdep recorded a new "PREFIX* -> mmap_lock" edge.
 * Returns OP's first result (the observation); the number of tries is not observed (it varies). */
static long contended(long (*op)(void *), void *arg, const char *prefix)
{
	pthread_t t;
	int before = mmap_lock_edges(prefix);
	long first = op(arg);
	stop_helper = 0;
	pthread_create(&t, NULL, helper, NULL);
	for (int i = 0; i < (before < 0 ? NO_LOCKDEP_TRIES : MAX_TRIES); i++) {
		op(arg);
		if (before >= 0 && (i + 1) % (i < 64 ? 16 : 64) == 0 && mmap_lock_edges(prefix) > before)
			break;
	}
	stop_helper = 1;
	pthread_join(t, NULL);
	return first;
}

static long write_unmapped(void *arg)
{
	return write(*(int *)arg, unmapped, 4096) < 0 ? -errno : 0;
}

static long getdents_unmapped(void *arg)
{
	int dfd = open(P((const char *)arg), O_RDONLY | O_DIRECTORY);
	long n = dfd < 0 ? -errno : syscall(SYS_getdents64, dfd, unmapped, 4096);
	if (n < 0 && dfd >= 0)
		n = -errno;
	if (dfd >= 0)
		close(dfd);
	return n < 0 ? n : 0;
}

static void obs_neg_errno(const char *key, long r)
{
	obs_rc(key, r < 0 ? (errno = (int)-r, -1) : 0);
}

int main(int argc, char **argv)
{
	char p[4200], q[4200];
	init(argc, argv);
	hold = mmap(NULL, HOLD, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (hold == MAP_FAILED)
		die("mmap hold");
	memset(hold, 1, HOLD);
	/* a buffer with no VMA behind it: a page-sized hole between two guard mappings, so no later
	 * mmap of this program (or of libc) can land there */
	unmapped = mmap(NULL, 3 * 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (unmapped == MAP_FAILED)
		die("mmap");
	unmapped += 4096;
	munmap(unmapped, 4096);

	/* 1. upper file lock --> mmap_lock */
	obs_rc("mkdir_upper_dir", mkdir(P("new"), 0755));
	int wfd = open(P("new/scratch"), O_WRONLY | O_CREAT, 0644);
	if (wfd < 0)
		die("scratch");
	obs_neg_errno("write_from_unmapped_buffer", contended(write_unmapped, &wfd, "&sb->s_type->i_mutex_key"));
	close(wfd);

	/* 2. directory locks --> mmap_lock */
	obs_neg_errno("getdents_upper_dir", contended(getdents_unmapped, "new", "&type->i_mutex_dir_key"));
	obs_neg_errno("getdents_merged_dir", contended(getdents_unmapped, "d", "&ovl_i_mutex_dir_key"));

	/* 3. rename within the merged directory (copies up d and d/r first) */
	obs_rc("rename_lower_file", rename(P("d/r"), P("d/r-renamed")));

	/* 4. MAP_SHARED of lower files through read-only fds, then 5. read through the maps */
	int ok = 0;
	for (int i = 0; i < NFILES; i++) {
		snprintf(p, sizeof(p), "%s/d/f%d", MERGED, i);
		int fd = open(p, O_RDONLY);
		if (fd < 0)
			continue;
		char *m = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
		if (m != MAP_FAILED) {
			snprintf(q, sizeof(q), "lower file %d\n", i);
			ok += memcmp(m, q, strlen(q)) == 0;
			munmap(m, 4096);
		}
		close(fd);
	}
	obs_int("maps_with_lower_data", ok);
	obs_dir("d_listing", "d");
	return 0;
}
