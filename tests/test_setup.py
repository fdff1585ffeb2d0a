"""setup.sh leaves the host as it was apart from packages: none of the packages it installs ships a
service (a systemd unit or an init script) that Debian would enable and start on install."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SERVICE = re.compile(r"^/(usr/)?lib/systemd/system/[^/]+\.(service|socket|timer)$|^/etc/init\.d/", re.M)


def setup_packages() -> list[str]:
    text = (REPO / "setup.sh").read_text()
    m = re.search(r'^PKGS="([^"]*)"', text, re.M | re.S)
    assert m, "setup.sh has no PKGS list"
    return m.group(1).split()


def test_setup_installs_dropbear_not_openssh_server():
    pkgs = setup_packages()
    assert "dropbear-bin" in pkgs and "openssh-server" not in pkgs


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="not a Debian system")
def test_no_package_setup_installs_ships_a_service():
    shipping = {}
    for p in setup_packages():
        out = subprocess.run(["dpkg", "-L", p], capture_output=True, text=True)
        if out.returncode != 0:
            continue              # not installed here: setup.sh has not run on this machine
        found = [l for l in out.stdout.splitlines() if SERVICE.match(l)]
        if found:
            shipping[p] = found
    assert shipping == {}
