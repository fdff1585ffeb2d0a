"""A splat (one kernel report, deduplicated: the first occurrence with a count) and what is done with a
list of them: merge by signature, new against a baseline, is it fatal, a readable table."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable

from rig.analysis.splats.table import FATAL_KINDS
from rig.analysis.splats.titles import signature_of


@dataclass
class Splat:
    kind: str      # one of KINDS (table.Kind)
    title: str     # syzkaller's title (pkg/report's rules), e.g. "possible deadlock in lock_rename"
    log: str       # the first occurrence's full excerpt, console prefixes stripped
    count: int = 1
    # stable identity (titles.py), e.g. "lockdep-cycle:&mm->mmap_lock|sb_writers";
    # left empty, it is computed from the excerpt (or, without one, from the title)
    signature: str = ""
    # the title overlayfs work wants when it differs from syzkaller's (e.g. "possible deadlock in
    # ovl_copy_up_one" where syzkaller names the lock helper lock_rename); left empty, it is the title
    where: str = ""
    corrupted: bool = False    # syzkaller would mark the report corrupted (no usable stack, truncated, ...)

    def __post_init__(self) -> None:
        if not self.signature:
            self.signature = signature_of(self.kind, self.title, self.log)
        if not self.where:
            self.where = self.title

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "title": self.title, "where": self.where, "signature": self.signature,
                "corrupted": self.corrupted, "log": self.log, "count": self.count}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Splat":
        """Also reads JSON written before signatures, `where` or `corrupted` existed: the signature is then
        computed from the log, `where` is the title, `corrupted` false."""
        return cls(kind=d["kind"], title=d["title"], log=d.get("log", ""), count=int(d.get("count", 1)),
                   signature=d.get("signature") or "", where=d.get("where") or "",
                   corrupted=bool(d.get("corrupted", False)))


def is_fatal(splat: Splat) -> bool:
    """True when the splat means the kernel died (a panic: nothing after it in that boot can be trusted)."""
    return splat.kind in FATAL_KINDS


def merge(splats: Iterable[Splat]) -> list[Splat]:
    """One Splat per signature, in order of first appearance, counts summed; the first occurrence's
    title and excerpt are kept. The inputs are not modified."""
    out: dict[str, Splat] = {}
    for sp in splats:
        if sp.signature in out:
            out[sp.signature].count += sp.count
        else:
            out[sp.signature] = dataclasses.replace(sp)
    return list(out.values())


def new_splats(baseline: list[Splat], patched: list[Splat]) -> list[Splat]:
    """The patched run's splats whose signatures the baseline run did not have (a lockdep cycle that the
    baseline closed by another edge, under another title, is not new)."""
    seen = {s.signature for s in baseline}
    return [s for s in patched if s.signature not in seen]


def format_table(splats: list[Splat]) -> str:
    """Readable table (kind, count, title; `where` under it when it differs) with a one-line hint under it."""
    if not splats:
        return "no splats found (no lockdep report, WARNING, BUG, oops, sanitizer report, hang or panic)"
    kw = max(4, max(len(s.kind) for s in splats))
    rows = [f"{'KIND':<{kw}}  {'COUNT':>5}  TITLE"]
    for s in splats:
        rows.append(f"{s.kind:<{kw}}  {s.count:>5}  {s.title}" + ("   [corrupted]" if s.corrupted else "")
                    + ("   [kernel died]" if is_fatal(s) else ""))
        if s.where != s.title:
            rows.append(f"{'':<{kw}}  {'':>5}  where: {s.where}")
    fatal = sum(1 for s in splats if is_fatal(s))
    n = len(splats)
    hint = f"{n} distinct splat{'s' if n != 1 else ''}"
    if fatal:
        hint += f", {fatal} fatal (the kernel panicked; later output of that boot is not trustworthy)"
    hint += ". Full excerpts: --json."
    return "\n".join(rows + ["", hint])
