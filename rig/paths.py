"""Where things live: the checkout, the cache, run directories."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUEST_TESTS = REPO / "guest_tests"
TEMPLATES = Path(__file__).resolve().parent / "templates"
DATA = Path(__file__).resolve().parent / "data"


def cache_dir() -> Path:
    """$KPROTO_CACHE, default ~/.cache/kproto."""
    env = os.environ.get("KPROTO_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "kproto"
    base.mkdir(parents=True, exist_ok=True)
    return base
