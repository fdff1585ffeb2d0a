/* Lock orders around copy-up under mmap (the 2016 RFC's lockdep report: mmap_sem -> copy-up ->
 * lock_rename, against readdir -> fault -> mmap_sem). Two threads of one process, same overlay:
 *   A: MAP_SHARED mmap of lower files through read-only fds (with a patch that copies up on shared
 *      mmap, that copy-up runs under mmap_lock), then rename within the merged dir;
 *   B: getdents64 of the merged and upper-backed directory into buffers that are fresh, untouched
 *      mappings (so filling them faults), and write(2) to an overlay file from a fresh mapping.
 * Lockdep sees both orders if a cycle exists; a real deadlock shows as a hang. The observations are
 * only the deterministic outcome, identical on every correct target. */
#include "common.h"
#include <pthread.h>
#include <dirent.h>
#include <sys/syscall.h>

#define NFILES 12
static char mnt[4096];
static int errors_a, errors_b;

static void pathf(char *buf, size_t n, const char *fmt, int i)
{
	char rel[256];
	snprintf(rel, sizeof(rel), fmt, i);
	snprintf(buf, n, "%s/%s", mnt, rel);
}

static void *thread_a(void *arg)
{
	(void)arg;
	for (int i = 0; i < NFILES; i++) {
		char p[4200], q[4200];
		pathf(p, sizeof(p), "d/f%02d", i);
		int fd = open(p, O_RDONLY);
		if (fd < 0) { errors_a++; continue; }
		char *m = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
		if (m == MAP_FAILED) { errors_a++; close(fd); continue; }
		volatile char c = m[0]; (void)c;
		munmap(m, 4096);
		close(fd);
		pathf(q, sizeof(q), "d/renamed%02d", i);
		if (rename(p, q) != 0)
			errors_a++;
	}
	return NULL;
}

static void *thread_b(void *arg)
{
	(void)arg;
	char dpath[4200], spath[4200];
	snprintf(dpath, sizeof(dpath), "%s/d", mnt);
	for (int round = 0; round < NFILES; round++) {
		/* a fresh mapping of an overlay file: the first store into it faults */
		pathf(spath, sizeof(spath), "scratch%02d", round);
		int sfd = open(spath, O_RDWR | O_CREAT, 0644);
		if (sfd < 0 || ftruncate(sfd, 65536) != 0) { errors_b++; if (sfd >= 0) close(sfd); continue; }
		char *buf = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE, sfd, 0);  /* private: the dirents (inode numbers) must not land in the file */
		if (buf == MAP_FAILED) { errors_b++; close(sfd); continue; }
		int dfd = open(dpath, O_RDONLY | O_DIRECTORY);
		if (dfd < 0 || syscall(SYS_getdents64, dfd, buf, 65536) < 0)
			errors_b++;
		if (dfd >= 0)
			close(dfd);
		/* write(2) to an overlay file whose source is another fresh mapping */
		char *src = mmap(NULL, 65536, PROT_READ, MAP_SHARED, sfd, 0);
		int wfd = open(spath, O_WRONLY | O_APPEND);
		if (src == MAP_FAILED || wfd < 0 || write(wfd, src + 32768, 4096) != 4096)
			errors_b++;
		if (wfd >= 0)
			close(wfd);
		if (src != MAP_FAILED)
			munmap(src, 65536);
		munmap(buf, 65536);
		close(sfd);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t a, b;
	init(argc, argv);
	snprintf(mnt, sizeof(mnt), "%s", MERGED);
	pthread_create(&a, NULL, thread_a, NULL);
	pthread_create(&b, NULL, thread_b, NULL);
	pthread_join(a, NULL);
	pthread_join(b, NULL);
	obs_int("mmap_rename_errors", errors_a);
	obs_int("getdents_write_errors", errors_b);
	DIR *d = opendir(P("d"));
	int n = 0;
	struct dirent *e;
	while (d && (e = readdir(d)))
		n += strncmp(e->d_name, "renamed", 7) == 0;
	if (d)
		closedir(d);
	obs_int("renamed_entries", n);
	return 0;
}
