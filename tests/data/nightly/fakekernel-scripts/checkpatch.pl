#!/usr/bin/perl
# Stand-in for the kernel's scripts/checkpatch.pl in the fake kernel tree of the nightly cluster tests:
# every patch is clean.
print "total: 0 errors, 0 warnings, 1 lines checked\n";
exit 0;
