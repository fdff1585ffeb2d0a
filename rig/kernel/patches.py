"""Patch inputs: validation, series expansion (file, directory of format-patch output, mbox), hashing."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from rig.core.errors import BadInput

_MBOX_FROM = re.compile(rb"^From [0-9a-f]{40} ", re.M)
_DIFF_START = re.compile(rb"^(diff --git |--- \S|Index: )", re.M)
_HUNK = re.compile(rb"^@@ -\d+(,\d+)? \+\d+(,\d+)? @@", re.M)
_SUBJECT = re.compile(rb"^Subject: (.*(?:\n[ \t].*)*)", re.M)


@dataclass(frozen=True)
class Patch:
    path: Path
    sha256: str
    subject: str
    mail: bool          # git format-patch / mbox form: apply with `git am`
    count: int = 1      # number of patches in the file (mbox series)

    def as_json(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256}


def _subject(data: bytes) -> str:
    m = _SUBJECT.search(data)
    if not m:
        return ""
    return re.sub(r"\s+", " ", m.group(1).decode("utf-8", "replace")).strip()


def load(path: Path) -> Patch:
    """Read and sanity-check one patch file; BadInput with a one-line reason otherwise."""
    p = Path(path)
    if not p.exists():
        raise BadInput(f"patch not found: {p} (check the path)")
    if p.is_dir():
        raise BadInput(f"{p} is a directory; pass its patches (kproto expands directories with expand())")
    data = p.read_bytes()
    if not data.strip():
        raise BadInput(f"patch {p} is empty (regenerate it with git format-patch)")
    if b"\0" in data[:65536]:
        raise BadInput(f"{p} is a binary file, not a patch (pass the .patch text from git format-patch)")
    if not _DIFF_START.search(data) or not _HUNK.search(data):
        raise BadInput(f"{p} is not a patch: no diff header with hunks found (regenerate it with git format-patch or git diff)")
    mail = bool(_MBOX_FROM.search(data)) or data.startswith(b"From:") or bool(re.search(rb"^Subject: ", data[:4096], re.M))
    count = max(1, len(_MBOX_FROM.findall(data)))
    return Patch(path=p.resolve(), sha256=hashlib.sha256(data).hexdigest(), subject=_subject(data), mail=mail,
                 count=count)


def expand(paths: list[Path] | tuple[Path, ...]) -> list[Patch]:
    """Expand arguments into an ordered series. A directory contributes its *.patch files in name order,
    skipping a 0000- cover letter (which has no diff)."""
    out: list[Patch] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix in (".patch", ".diff", ".mbox", ".eml"))
            files = [f for f in files if not f.name.startswith("0000-")]
            if not files:
                raise BadInput(f"directory {p} holds no *.patch files")
            out.extend(load(f) for f in files)
        else:
            out.append(load(p))
    return out


def series_digest(patches: list[Patch]) -> str:
    h = hashlib.sha256()
    for p in patches:
        h.update(p.sha256.encode())
    return h.hexdigest()
