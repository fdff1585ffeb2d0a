#!/bin/sh
# kproto set-up for a fresh Debian 12 machine, as root: system packages, .venv, the FUSE mount helper.
# Idempotent and quiet when everything is already in place. Starts and enables no service: the guests'
# SSH server is dropbear from dropbear-bin (the binary only, no unit, no init script); see
# tests/test_setup.py.
set -eu
cd "$(dirname "$0")"

PKGS="qemu-system-x86 linux-source-6.12 flex bison bc libelf-dev libssl-dev cpio dropbear-bin
openssh-client fuse3 libfuse3-dev pkg-config ccache gcc make git libc6-dev perl python3 python3-venv
python3-dev iproute2 chromium"

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    [ "$(id -u)" = 0 ] || { echo "setup.sh: installing$missing needs root (run as root or with sudo)" >&2; exit 2; }
    echo "setup.sh: installing system packages:$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends $missing >&2
fi

# The venv uses Debian's python3 (what the guest runs too), never a pyenv/conda one from PATH.
if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv .venv
fi
stamp=.venv/.kproto-installed
want=$( (cat pyproject.toml; find rig overlay_ref -name __init__.py | sort) | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup.sh: installing kproto into .venv" >&2
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' >&2
    echo "$want" > "$stamp"
fi

# Byte-compile the checkout: where PYTHONDONTWRITEBYTECODE is set (CI images, containers) Python never
# writes __pycache__, so every kproto command and every reference daemon (one per mount) would compile
# the sources again, ~40 ms of a daemon's start here. Files already compiled are skipped.
.venv/bin/python -m compileall -q -j0 rig overlay_ref >/dev/null

# mount -t fuse.kproto-ovl: the helper runs this checkout's venv python
if [ "$(id -u)" = 0 ]; then
    .venv/bin/python -m overlay_ref install-helper /sbin/mount.fuse.kproto-ovl >&2
fi
