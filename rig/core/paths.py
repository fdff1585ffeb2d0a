"""Where things live: the checkout, the cache, run directories."""
from __future__ import annotations

import os
from pathlib import Path

RIG = Path(__file__).resolve().parent.parent
REPO = RIG.parent
GUEST_TESTS = REPO / "guest_tests"


def cache_dir() -> Path:
    """$KPROTO_CACHE, default ~/.cache/kproto."""
    env = os.environ.get("KPROTO_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "kproto"
    base.mkdir(parents=True, exist_ok=True)
    return base
