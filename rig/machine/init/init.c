/*
 * kproto guest stage-1 init: PID 1 on the curated guest root (rig/machine/guestroot.py).
 *
 * That root holds no programs of its own: /bin, /lib, /sbin are symlinks into /usr, which is the host's
 * /usr exported read-only over virtio-9p (mount tag "usr"). So the first thing that runs must be a
 * static binary. It mounts /usr, a tmpfs on /mnt, the run's writable share (9p tag argv[1]) on argv[2],
 * and execs /bin/sh argv[2]/init: the rendered init.sh (rig/machine/templates/init.sh.j2).
 * The kernel passes argv[1..] from the words after "--" on its command line.
 *
 * On any failure it says what failed on the console and exits: the kernel panics (PID 1 died), panic=-1
 * reboots, QEMU runs with -no-reboot and exits, and the host's BootError shows this console line.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#define NINEP_OPTS "trans=virtio,version=9p2000.L,msize=512000"

static void fail(const char *what, const char *where)
{
	fprintf(stderr, "kproto-init: %s %s: %s\n", what, where, strerror(errno));
	exit(1);
}

int main(int argc, char **argv)
{
	char script[4096];

	if (argc < 3) {
		fprintf(stderr, "kproto-init: usage: init SHARE_TAG SHARE_MOUNTPOINT (kernel command line: -- TAG DIR)\n");
		return 1;
	}
	if (mount("usr", "/usr", "9p", MS_RDONLY, NINEP_OPTS ",cache=loose"))
		fail("cannot mount the host's /usr (9p tag usr) on", "/usr");
	if (mount("tmpfs", "/mnt", "tmpfs", 0, "mode=755"))
		fail("cannot mount a tmpfs on", "/mnt");
	if (mkdir(argv[2], 0755) && errno != EEXIST)
		fail("cannot create", argv[2]);
	if (mount(argv[1], argv[2], "9p", 0, NINEP_OPTS))
		fail("cannot mount the run share on", argv[2]);
	snprintf(script, sizeof(script), "%s/init", argv[2]);
	execl("/bin/sh", "sh", script, (char *)NULL);
	fail("cannot exec /bin/sh", script);
	return 1;
}
