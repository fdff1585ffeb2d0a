/* Opaque dir from the fixture (lower1 d opaque hides lower2 d/x, d/y); and one made at run time:
 * empty e (lower) by unlink+rmdir, then mkdir e: the new e must be empty. */
#include "common.h"

int main(int argc, char **argv)
{
	init(argc, argv);
	obs_dir("listing_opaque_d", "d");
	obs_file("data_d_z", "d/z");
	obs_file("data_d_x", "d/x");
	obs_rc("unlink_e_p", unlink(P("e/p")));
	obs_rc("unlink_e_q", unlink(P("e/q")));
	obs_rc("rmdir_e", rmdir(P("e")));
	obs_rc("mkdir_e", mkdir(P("e"), 0755));
	obs_dir("listing_new_e", "e");
	obs_dir("root_listing", ".");
	return 0;
}
