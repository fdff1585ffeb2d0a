/*
 * kproto guest socket shim: LD_PRELOADed into the guest's SSH server (dropbear) by the init's relay.
 *
 * The guest kernel has no networking (CONFIG_NET off: not one socket family), and the host's SSH
 * connections reach the guest through a virtio-serial port that the init relays to a pseudo-terminal
 * (rig/machine/init/init.c). dropbear in inetd mode reads and writes that terminal as its connection,
 * but first asks for the peer's and its own address and exits when it cannot get them. Here both are
 * an AF_UNIX address with no path: what dropbear was given before, from a socketpair. setsockopt (TCP
 * options, IP type of service) fails with ENOTSOCK, which dropbear ignores quietly (ENOSYS it logs).
 *
 * The constructor takes LD_PRELOAD out of the environment, so nothing the server starts inherits it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

__attribute__((constructor)) static void forget_preload(void)
{
	unsetenv("LD_PRELOAD");
}

static int unix_address(struct sockaddr *addr, socklen_t *len)
{
	sa_family_t family = AF_UNIX;

	if (!len)
		return errno = EFAULT, -1;
	if (addr && *len >= sizeof(family))
		memcpy(addr, &family, sizeof(family));
	*len = sizeof(family);
	return 0;
}

int getpeername(int fd, struct sockaddr *addr, socklen_t *len)
{
	(void)fd;
	return unix_address(addr, len);
}

int getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
	(void)fd;
	return unix_address(addr, len);
}

int setsockopt(int fd, int level, int name, const void *value, socklen_t len)
{
	(void)fd, (void)level, (void)name, (void)value, (void)len;
	return errno = ENOTSOCK, -1;
}
