/* Two processes at once: the reader maps the lower file MAP_SHARED from a rofd (before copy-up),
 * the writer then opens it O_WRONLY (copy-up) and writes. The reader must see the write in its
 * mapping, via pread on its rofd, and in a new mapping of the same rofd. */
#include "common.h"

int main(int argc, char **argv)
{
	init(argc, argv);
	int to_child[2], to_parent[2];
	if (pipe(to_child) || pipe(to_parent))
		die("pipe");
	pid_t pid = fork();
	if (pid == 0) {
		char res[3 * 7];
		int rofd = open(P("foo"), O_RDONLY);
		char *map = rofd >= 0 ? mmap(NULL, 4096, PROT_READ, MAP_SHARED, rofd, 0) : MAP_FAILED;
		if (map == MAP_FAILED)
			_exit(1);
		sig_send(to_parent[1], 'm');           /* mapped */
		sig_wait(to_child[0]);                 /* written */
		memcpy(res, map, 7);
		if (pread(rofd, res + 7, 7, 0) != 7)
			memset(res + 7, '?', 7);
		char *map2 = mmap(NULL, 4096, PROT_READ, MAP_SHARED, rofd, 0);
		if (map2 == MAP_FAILED)
			memset(res + 14, '?', 7);
		else
			memcpy(res + 14, map2, 7);
		if (write(to_parent[1], res, sizeof res) != sizeof res)
			_exit(1);
		_exit(0);
	}
	obs_str("reader_mapped", "%c", sig_wait(to_parent[0]));
	int rwfd = xopen(P("foo"), O_WRONLY);
	obs_rc("writer_pwrite", pwrite(rwfd, "NEWDATA", 7, 0));
	sig_send(to_child[1], 'w');
	char res[21];
	ssize_t n = read(to_parent[0], res, sizeof res);
	int st;
	waitpid(pid, &st, 0);
	obs_int("reader_exit", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	if (n != sizeof res)
		die("reader result");
	obs_data("reader_map_data", res, 7);
	obs_data("reader_pread_data", res + 7, 7);
	obs_data("reader_new_map_data", res + 14, 7);
	return 0;
}
