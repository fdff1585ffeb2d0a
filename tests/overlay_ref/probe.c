/* docs/design.md §2 probes: copy-up consistency of an fd opened read-only before copy-up.
 * usage: probe N FILE   (FILE lives in a lower layer, holds "foo")
 * prints what the read-only fd / mapping sees after "barbaz" was written through another fd. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdlib.h>

static void die(const char *m) { perror(m); exit(2); }

int main(int argc, char **argv)
{
	if (argc != 3) { fprintf(stderr, "usage: probe N FILE\n"); return 2; }
	int n = atoi(argv[1]);
	const char *f = argv[2];
	char buf[64] = {0};
	struct stat st, pst;
	char *map = NULL;
	int rofd = open(f, O_RDONLY);
	if (rofd < 0) die("open ro");
	if (n == 3) {
		map = mmap(NULL, 4096, PROT_READ, MAP_SHARED, rofd, 0);
		if (map == MAP_FAILED) die("mmap");
		if (memcmp(map, "foo", 3)) { fprintf(stderr, "bad initial data\n"); return 2; }
	}
	int rwfd = open(f, O_WRONLY);
	if (rwfd < 0) die("open rw");
	if (write(rwfd, "barbaz", 6) != 6) die("write");
	switch (n) {
	case 1:
		if (pread(rofd, buf, sizeof(buf) - 1, 0) < 0) die("pread");
		printf("%s\n", buf);
		break;
	case 2:
		if (fstat(rofd, &st)) die("fstat");
		if (stat(f, &pst)) die("stat");
		printf("size=%lld same_ino=%d same_mtime=%d\n", (long long)st.st_size,
		       st.st_ino == pst.st_ino,
		       st.st_mtim.tv_sec == pst.st_mtim.tv_sec && st.st_mtim.tv_nsec == pst.st_mtim.tv_nsec);
		break;
	case 3:
		printf("%.6s\n", map);
		break;
	case 4:
		map = mmap(NULL, 4096, PROT_READ, MAP_SHARED, rofd, 0);
		if (map == MAP_FAILED) die("mmap");
		printf("%.6s\n", map);
		break;
	default:
		return 2;
	}
	return 0;
}
