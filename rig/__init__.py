"""kproto host side: source tree, config, build, VM, SSH, guest tests, comparison, reports."""
