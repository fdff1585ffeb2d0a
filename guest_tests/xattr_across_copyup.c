/* user.* and trusted.* xattrs of a lower file: get/list before, set (copy-up), get/list via path
 * and via the rofd opened before, remove. Overlay's own xattrs must never show. */
#include "common.h"

static void get(const char *key, const char *name, int fd)
{
	char v[256];
	ssize_t n = fd >= 0 ? fgetxattr(fd, name, v, sizeof v) : getxattr(P("foo"), name, v, sizeof v);
	if (n < 0)
		obs_str(key, "%s", errname(errno));
	else
		obs_data(key, v, n);
}

int main(int argc, char **argv)
{
	init(argc, argv);
	int rofd = xopen(P("foo"), O_RDONLY);
	get("get_user_foo", "user.foo", -1);
	get("get_trusted_kproto", "trusted.kproto", -1);
	obs_xattr_list("list_before", P("foo"), -1);
	obs_rc("set_user_new", setxattr(P("foo"), "user.new", "1", 1, 0));
	get("get_user_new", "user.new", -1);
	get("ro_fd_get_user_new", "user.new", rofd);
	get("ro_fd_get_user_foo", "user.foo", rofd);
	obs_xattr_list("list_after_set", P("foo"), -1);
	obs_xattr_list("ro_fd_list_after_set", NULL, rofd);
	obs_rc("remove_user_foo", removexattr(P("foo"), "user.foo"));
	get("get_user_foo_after_remove", "user.foo", -1);
	obs_xattr_list("list_after_remove", P("foo"), -1);
	obs_rc("set_create_existing", setxattr(P("foo"), "user.new", "2", 1, XATTR_CREATE));
	obs_fd("ro_fd_data", rofd);
	return 0;
}
