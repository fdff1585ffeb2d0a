#!/usr/bin/perl
# Stand-in for the kernel's scripts/get_maintainer.pl in the fake kernel tree of the nightly cluster tests.
print "Kproto Tester <tester\@example.org> (maintainer:OVERLAY FILESYSTEM)\n";
exit 0;
