"""Runs last (file order): every lower layer any test of this directory built is still
byte-identical (contents, modes, owners, times, xattrs) after the whole suite."""

from ovl_helpers import ALL_LOWERS, tree_digest


def test_lower_layers_unchanged_after_suite():
    checked = 0
    for d, dig in ALL_LOWERS.items():
        if d.exists():
            assert tree_digest(d) == dig, f"lower layer {d} was modified"
            checked += 1
    assert checked or not ALL_LOWERS
