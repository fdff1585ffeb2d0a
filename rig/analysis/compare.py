"""Compare guest-test results between targets, observation by observation.

Inputs are harness result dicts (rig/guest/harness.py) keyed by test name. What is compared:
- every observation key the program printed (a key missing on one side is a difference);
- exit_code and signal;
- lower_modified (a target must never write to a lower layer);
- the comparable part of the upper layer (key "upper:<path>"): per path the entry type, mode, uid, gid,
  size (regular files), symlink target, whiteout (mode of a whiteout ignored), and for directories that
  also exist in a lower layer whether they are opaque; the data digest (sha256) of regular files when
  every compared side recorded one (not for metacopy-only copies, whose data stays below). NOT compared:
  trusted.overlay.origin / impure / nlink / uuid / metacopy / index, redirect values (absolute vs
  relative is an implementation choice) and directory sizes: a correct overlay may differ there (the
  kernel records origin on copy-up, the reference need not).
- an upper regular file present on one side only, over a lower file, is a side effect (an extra copy-up,
  not a divergence) only when it equals its lower file: data digest, size, mode, uid, gid and user./
  security. xattrs (the harness's `lower` record). A copy-up that lost a chmod or a write diverges.
Statuses (docs/design.md §4, rig/analysis/verdict.TestStatus): match / fixed / regressed / diverges / error,
"known" qualifying a divergence fully explained by guest_tests/known_divergences.toml (rig/analysis/known).

Layout: TestVerdict / ObsDiff (one test's outcome, with its JSON codec); the comparable view of a result
(comparable, _views, diff_keys, side_effects: what is compared and what counts as an extra copy-up);
compare_target / compare_run (the status rules); counts / unexplained (tallies). The outputs (table,
KTAP, JUnit) live in rig/report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, TypeGuard

from rig.analysis.known import Known
from rig.analysis.verdict import TestStatus

OBS_FIELDS = ("observations", "exit_code", "signal", "upper", "status", "error")
ABSENT = None
COLUMNS = ("reference", "baseline", "patched")


# ---------------------------------------------------------------- verdicts

@dataclass
class ObsDiff:
    key: str
    reference: str | None
    baseline: str | None
    patched: str | None

    def as_json(self) -> dict:
        return {"key": self.key, "reference": self.reference, "baseline": self.baseline, "patched": self.patched}


def _obs(res: dict) -> dict:
    return {k: res.get(k) for k in OBS_FIELDS} if res else {}


@dataclass
class TestVerdict:
    __test__ = False  # not a pytest class

    name: str
    status: TestStatus               # a plain status string is accepted (and made a TestStatus)
    known: str | None = None
    diffs: list[ObsDiff] = field(default_factory=list)
    reference: dict = field(default_factory=dict)
    baseline: dict = field(default_factory=dict)
    patched: dict = field(default_factory=dict)
    reason: str | None = None        # error: what went wrong; regressed: the new divergences
    side_effects: list[str] = field(default_factory=list)   # extra copy-ups, not divergences

    def __post_init__(self) -> None:
        self.status = TestStatus(self.status)

    def as_json(self) -> dict:
        return {"name": self.name, "status": str(self.status), "known": self.known,
                "diffs": [d.as_json() for d in self.diffs], "reference": _obs(self.reference),
                "baseline": _obs(self.baseline), "patched": _obs(self.patched), "reason": self.reason,
                "side_effects": self.side_effects}

    def as_target_json(self) -> dict:
        """For `kproto run-tests --json`: the compared target is `target` (no baseline)."""
        return {"name": self.name, "status": str(self.status), "known": self.known,
                "diffs": [{"key": d.key, "reference": d.reference, "target": d.patched} for d in self.diffs],
                "reference": _obs(self.reference), "target": _obs(self.patched), "reason": self.reason}

    @classmethod
    def from_json(cls, t: dict) -> TestVerdict:
        """Back from as_json() (e.g. a report's "tests" entry; extra keys are ignored). The result dicts
        hold only the compared fields (OBS_FIELDS), so e.g. durations are gone."""
        return cls(name=t["name"], status=TestStatus(t["status"]), known=t.get("known"),
                   diffs=[ObsDiff(d["key"], d.get("reference"), d.get("baseline"), d.get("patched"))
                          for d in t.get("diffs") or []],
                   reference=t.get("reference") or {}, baseline=t.get("baseline") or {},
                   patched=t.get("patched") or {}, reason=t.get("reason"),
                   side_effects=list(t.get("side_effects") or []))

    def diff_lines(self, columns: Sequence[str] = COLUMNS) -> list[str]:
        """The differing observations, one "key: reference='..', baseline='..', patched='..'" line each
        (COLUMNS: which of reference/baseline/patched)."""
        return [f"{d.key}: " + ", ".join(f"{c}={getattr(d, c)!r}" for c in columns) for d in self.diffs]


def _fmt_upper(ent: dict | None) -> str | None:
    if ent is None:
        return ABSENT
    if ent.get("whiteout"):
        return "whiteout"
    parts = [str(ent.get("type")), str(ent.get("mode")), f"{ent.get('uid')}:{ent.get('gid')}"]
    if ent.get("type") == "file":
        parts.append(f"size={ent.get('size')}")
    if ent.get("type") == "symlink":
        parts.append(f"-> {ent.get('target')}")
    if ent.get("type") == "dir" and ent.get("in_lower"):
        opaque = any(k.endswith(".overlay.opaque") and v in ("y", "x")
                     for k, v in (ent.get("xattrs") or {}).items())
        parts.append("opaque" if opaque else "merged")
    return " ".join(parts)


def comparable(res: dict) -> dict[str, str | None]:
    """The flat key -> value view of a result that comparisons use."""
    out: dict[str, str | None] = {}
    for k, v in (res.get("observations") or {}).items():
        out[k] = str(v)
    out["exit_code"] = None if res.get("exit_code") is None else str(res["exit_code"])
    out["signal"] = None if res.get("signal") is None else str(res["signal"])
    out["lower_modified"] = "true" if res.get("lower_modified") else "false"
    for p, ent in (res.get("upper") or {}).items():
        out[f"upper:{p}"] = _fmt_upper(ent)
    return out


def _is_file(ent: dict | None) -> TypeGuard[dict]:
    return ent is not None and ent.get("type") == "file" and not ent.get("whiteout")


def _metacopy(ent: dict) -> bool:
    return any(k.endswith(".overlay.metacopy") for k in (ent.get("xattrs") or {}))


def _digest(ent: dict | None) -> str | None:
    """The data digest of an upper regular file, None when there is none to compare: recorded before the
    harness kept digests, unreadable, or a metacopy-only copy (its upper file holds no data)."""
    if not _is_file(ent) or _metacopy(ent):
        return None
    return ent.get("sha256")


def _lower_mismatch(ent: dict) -> list[str] | None:
    """What differs between an upper regular file and the lower file at its path (the harness's `lower`
    record): [] for an exact copy-up. None for a result recorded before the harness kept `sha256` and
    `lower` (cached JSON): nothing to check against."""
    if "sha256" not in ent and "lower" not in ent:
        return None
    lo = ent.get("lower")
    if not isinstance(lo, dict):
        return ["lower"]          # in a lower layer, but no record of it: cannot prove equal
    out = [k for k in ("type", "size", "mode", "uid", "gid") if k not in ent or ent.get(k) != lo.get(k)]
    if "xattr_sha256" not in ent or "xattr_sha256" not in lo or ent["xattr_sha256"] != lo["xattr_sha256"]:
        out.append("xattrs")
    # a metacopy-only copy has no data of its own: its data is the lower file's by construction
    if not _metacopy(ent) and (ent.get("sha256") is None or ent.get("sha256") != lo.get("sha256")):
        out.append("data")
    return out


def _extra_copy_up(a: dict, b: dict, key: str) -> bool:
    """upper:P present on one side only, as a plain copy-up of a lower regular file: a copy-up the other
    side did not need (e.g. the 2016 RFC copies up on a read-only MAP_SHARED mmap). Not visible through
    the POSIX API, so reported as a side effect rather than a divergence -- but only when the copy equals
    its lower file (data, size, mode, owner, xattrs): a copy-up that then lost a chmod or a write is a
    divergence."""
    if not key.startswith("upper:"):
        return False
    p = key[len("upper:"):]
    ea, eb = (a.get("upper") or {}).get(p), (b.get("upper") or {}).get(p)
    one = ea if eb is None else eb if ea is None else None
    if not (_is_file(one) and one.get("in_lower")):
        return False
    # Entries without both `sha256` and `lower` come from results recorded before the harness kept them
    # (cached baseline/reference JSON): keep the old rule (a side effect) for those rather than flip
    # every cached extra copy-up into a divergence. Any entry carrying either field must prove equality.
    mismatch = _lower_mismatch(one)
    return mismatch is None or not mismatch


def _views(*results: dict | None) -> list[dict[str, str | None]]:
    """comparable() of each of RESULTS (compared with one another), plus for upper regular files:
    - the data digest (" sha256=<16 hex>") when every one of RESULTS holding a regular file at that path
      recorded a usable digest (so old cached results and metacopy-only copies compare by size as before);
    - on an in_lower file present in only one of RESULTS, what differs from its lower file
      (" (differs from lower: mode, data)"): shows why an extra copy-up is not a side effect. Values
      already differ there (absent on the other side), so this never adds nor hides a difference."""
    views = [comparable(r) if r else {} for r in results]
    uppers = [((r or {}).get("upper") or {}) for r in results]
    for p in set().union(*uppers):
        key = f"upper:{p}"
        ents = [u.get(p) for u in uppers]
        files = [(v, e) for v, e in zip(views, ents) if _is_file(e)]
        digests = [_digest(e) for _, e in files]
        if files and all(digests):
            for (v, _), dg in zip(files, digests):
                v[key] = f"{v[key]} sha256={(dg or '')[:16]}"
        present = [(v, e) for v, e in zip(views, ents) if e is not None]
        if len(results) > 1 and len(present) == 1 and files and present[0][1].get("in_lower"):
            v, e = present[0]
            mismatch = _lower_mismatch(e)
            if mismatch:
                v[key] = f"{v[key]} (differs from lower: {', '.join(mismatch)})"
    return views


def diff_keys(a: dict, b: dict) -> list[str]:
    ca, cb = _views(a, b)
    return sorted(k for k in set(ca) | set(cb)
                  if ca.get(k, ABSENT) != cb.get(k, ABSENT) and not _extra_copy_up(a, b, k))


def side_effects(ref: dict, target: dict) -> list[str]:
    """Copy-ups TARGET did that the reference did not (or the other way round), as readable notes."""
    ca, cb = _views(ref, target)
    out = []
    for k in sorted(set(ca) | set(cb)):
        if ca.get(k, ABSENT) != cb.get(k, ABSENT) and _extra_copy_up(ref, target, k):
            who = "copied up here, not by the reference" if ca.get(k) in (None, ABSENT) else \
                "not copied up here, copied up by the reference"
            out.append(f"{k[len('upper:'):]}: {who}")
    return out


def _ok(res: dict | None) -> TypeGuard[dict]:
    return res is not None and res.get("status") == "ok"


def _err_reason(label: str, res: dict | None) -> str:
    if not res:
        return f"no {label} result"
    return f"{label} {res.get('status')}: {res.get('error') or '?'}"


def _mk_diffs(keys: list[str], ref: dict, base: dict | None, pat: dict) -> list[ObsDiff]:
    """The values side by side: reference and patched as compared with each other, the baseline as
    compared with the reference."""
    cr, cp = _views(ref, pat)
    cb = _views(ref, base)[1] if base else None
    return [ObsDiff(k, cr.get(k), cb.get(k) if cb is not None else None, cp.get(k)) for k in keys]


NEW_REASON_DETAILED = 3     # keys spelled out with their values in a regressed reason; the rest named


def _show(v: str | None, width: int = 80) -> str:
    if v is None:
        return "(absent)"
    return repr(v if len(v) <= width else v[: width - 1] + "…")


def _new_reason(keys: list[str], diffs: list[ObsDiff]) -> str:
    by = {d.key: d for d in diffs}
    parts = [f"new divergence on {k} (reference {_show(by[k].reference)}, baseline {_show(by[k].baseline)}, "
             f"patched {_show(by[k].patched)})" for k in keys[:NEW_REASON_DETAILED]]
    rest = keys[NEW_REASON_DETAILED:]
    if rest:
        parts.append(f"{len(rest)} more new divergence(s): {', '.join(rest[:10])}{', …' if len(rest) > 10 else ''}")
    return "; ".join(parts)


def compare_target(reference: dict[str, dict], target: dict[str, dict], known: Known | None) -> list[TestVerdict]:
    """One target against the reference: match | diverges (known may qualify) | error."""
    known = known or Known()
    out = []
    for name in sorted(set(reference) | set(target)):
        ref, tgt = reference.get(name, {}), target.get(name, {})
        v = TestVerdict(name=name, status=TestStatus.MATCH, reference=ref, patched=tgt)
        if not _ok(ref) or not _ok(tgt):
            v.status = TestStatus.ERROR
            v.reason = "; ".join(_err_reason(lbl, r) for lbl, r in (("reference", ref), ("target", tgt))
                                 if not _ok(r))
            if ref and tgt:
                v.diffs = _mk_diffs(diff_keys(ref, tgt), ref, None, tgt)
        else:
            keys = diff_keys(ref, tgt)
            if keys:
                v.status = TestStatus.DIVERGES
                v.known = known.explain(name, keys)
                v.diffs = _mk_diffs(keys, ref, None, tgt)
        out.append(v)
    return out


def compare_run(reference: dict[str, dict], baseline: dict[str, dict], patched: dict[str, dict],
                known: Known | None) -> list[TestVerdict]:
    """Reference vs baseline kernel vs patched kernel, per test (docs/design.md §4):
    match: patched agrees with the reference (and the baseline did too, or it was not run);
    fixed: the baseline diverged (or errored), the patched agrees;
    regressed: the baseline ran (status ok) and the patched differs from the reference on some key where
      the baseline agreed with the reference, or holds a different wrong value there than the baseline
      did (new divergences; `reason` names them with the three values);
    diverges: the patched diverges only where the baseline did, with the baseline's very values -- or the
      baseline was not run, errored or timed out (nothing to tell old wrong values from new: diverges);
    error: the patched or the reference result is missing, errored or timed out.
    `known` is set for a divergence fully explained by the known-divergences data (for `fixed`: the
    divergence the patch fixed was a known one); never for `regressed`."""
    known = known or Known()
    out = []
    for name in sorted(set(reference) | set(patched) | set(baseline)):
        ref, base, pat = reference.get(name, {}), baseline.get(name), patched.get(name, {})
        v = TestVerdict(name=name, status=TestStatus.MATCH, reference=ref, baseline=base or {}, patched=pat)
        if not _ok(ref) or not _ok(pat):
            v.status = TestStatus.ERROR
            v.reason = "; ".join(_err_reason(lbl, r) for lbl, r in (("reference", ref), ("patched", pat))
                                 if not _ok(r))
            if ref and pat:
                keys = sorted(set(diff_keys(ref, pat)) | (set(diff_keys(ref, base)) if base else set()))
                v.diffs = _mk_diffs(keys, ref, base, pat)
            out.append(v)
            continue
        pkeys = diff_keys(ref, pat)
        base_ran = base is not None and bool(base)
        bkeys = diff_keys(ref, base) if base_ran and _ok(base) else None   # None: baseline errored
        base_agrees = base_ran and bkeys is not None and not bkeys
        if not pkeys:
            v.status = TestStatus.FIXED if base_ran and not base_agrees else TestStatus.MATCH
            if v.status == TestStatus.FIXED and bkeys:
                v.known = known.explain(name, bkeys)
        all_keys = sorted(set(pkeys) | set(bkeys or []))
        v.diffs = _mk_diffs(all_keys, ref, base if base_ran else None, pat)
        if pkeys:
            new: list[str] = []
            if bkeys is not None:
                # new divergences: keys where the baseline agreed with the reference, or held a different
                # wrong value (baseline vs patched compared directly, as diff_keys compares two sides)
                vb, vp = _views(base, pat)
                new = [k for k in pkeys if k not in bkeys or vb.get(k, ABSENT) != vp.get(k, ABSENT)]
            if new:
                v.status = TestStatus.REGRESSED
                v.reason = _new_reason(new, v.diffs)
            else:
                v.status = TestStatus.DIVERGES
                v.known = known.explain(name, pkeys)
        v.side_effects = side_effects(ref, pat)
        out.append(v)
    return out


def counts(verdicts: list[TestVerdict]) -> dict[str, int]:
    """Tests per status (every status, in TestStatus order, zeros included) and "known": the divergences
    the known-divergences file explains."""
    c = {s.value: 0 for s in TestStatus}
    c["known"] = 0
    for v in verdicts:
        c[str(v.status)] = c.get(str(v.status), 0) + 1
        if v.known and v.status == TestStatus.DIVERGES:
            c["known"] += 1
    return c


def unexplained(verdicts: list[TestVerdict]) -> list[TestVerdict]:
    """Divergences (and regressions) that no known-divergence entry explains."""
    return [v for v in verdicts
            if v.status == TestStatus.REGRESSED or (v.status == TestStatus.DIVERGES and not v.known)]

