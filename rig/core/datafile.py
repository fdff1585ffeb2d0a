"""Reading the data files users hand to kproto (TOML configs, JSON reports): a missing or malformed file is
one BadInput (exit 2) naming the file and what was expected, never a traceback."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Callable

from rig.core.errors import BadInput


def _load(path: Path | str, what: str, parse: Callable[[str], Any], errors: tuple[type[Exception], ...],
          fmt: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"{what} not found: {p}")
    catch: tuple[type[Exception], ...] = (*errors, UnicodeDecodeError)
    try:
        data = parse(p.read_text())
    except catch as e:
        raise BadInput(f"{p}: not valid {fmt}: {e}") from None
    if not isinstance(data, dict):
        raise BadInput(f"{p} is not a {what} (expected a {fmt} object)")
    return data


def load_toml(path: Path | str, what: str) -> dict:
    return _load(path, what, tomllib.loads, (tomllib.TOMLDecodeError,), "TOML")


def load_json(path: Path | str, what: str, required: tuple[str, ...] = ()) -> dict:
    """The JSON object in PATH, with the REQUIRED top-level keys."""
    data = _load(path, what, json.loads, (json.JSONDecodeError,), "JSON")
    missing = [k for k in required if k not in data]
    if missing:
        raise BadInput(f"{path} is not a {what}: missing key(s) {', '.join(missing)}")
    return data
