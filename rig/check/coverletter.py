"""The "Testing:" section of a cover letter, rendered with jinja2 from a `kproto test --json` report
(docs/design.md §4) and optionally a `kproto bench --json` file. Plain text an author pastes under "Testing:"."""
from __future__ import annotations

import textwrap
from pathlib import Path


from rig.kernel import kconfig
from rig.core import templates
from rig.core.datafile import load_json

# Options of the config worth naming in a cover letter: the debugging the test run had switched on.
NOTABLE = ("CONFIG_PROVE_LOCKING", "CONFIG_DEBUG_ATOMIC_SLEEP", "CONFIG_DETECT_HUNG_TASK", "CONFIG_KASAN",
           "CONFIG_SOFTLOCKUP_DETECTOR", "CONFIG_DEBUG_LIST", "CONFIG_UBSAN", "CONFIG_KFENCE", "CONFIG_OVERLAY_FS",
           "CONFIG_FUSE_FS")


def load_test_report(path: Path) -> dict:
    return load_json(path, "kproto test --json report", ("verdict", "kernel", "tests"))


def load_bench_report(path: Path) -> dict:
    return load_json(path, "kproto bench --json report", ("metrics",))


def config_summary(report: dict, fragments: tuple[Path, ...] = ()) -> dict:
    """What the tested kernel was configured with. The report may carry it (report["config"]: a list of
    fragment paths or {"base_target", "fragments"}); otherwise the kproto fragment plus FRAGMENTS."""
    cfg = report.get("config") or report.get("kernel", {}).get("config")
    frags = list(map(str, fragments))
    if isinstance(cfg, dict):
        frags = [str(f) for f in cfg.get("fragments", [])] or frags
    elif isinstance(cfg, list):
        frags = [str(f) for f in cfg] or frags
    elif isinstance(cfg, str) and cfg:
        frags = [cfg]
    base_target = cfg.get("base_target", kconfig.BASE_TARGET) if isinstance(cfg, dict) else kconfig.BASE_TARGET
    want = kconfig.requested(tuple(Path(f) for f in frags if Path(f).is_file()))
    notable = [f"{n}={want.value(n)}" for n in NOTABLE if want.value(n) != "n"]
    return {"base_target": base_target, "fragments": frags, "options": len(want.entries), "notable": notable}


def _obs_diff(t: dict) -> list[str]:
    diffs = t.get("diffs")
    if diffs is None:   # derive from the observations: keys where the kernels or the reference disagree
        obs = {side: (t.get(side) or {}).get("observations") or {} for side in ("reference", "baseline", "patched")}
        keys = sorted(set().union(*obs.values()))
        diffs = [{"key": k, **{side: obs[side].get(k) for side in obs}} for k in keys
                 if len({str(obs[side].get(k)) for side in obs}) > 1]
    out = []
    for d in diffs[:4]:
        out.append(f"{d['key']}: base kernel {d.get('baseline')!s}, patched {d.get('patched')!s}, "
                   f"reference {d.get('reference')!s}")
    return out


def _wrap(text: str, width: int = 76) -> str:
    """Mail-friendly lines: wrap long ones, continuation indented two more than the line."""
    out = []
    for line in text.splitlines():
        if len(line) <= width:
            out.append(line)
            continue
        indent = " " * (len(line) - len(line.lstrip()))
        out.extend(textwrap.wrap(line, width, subsequent_indent=indent + "    ",
                                 break_long_words=False, break_on_hyphens=False))
    return "\n".join(out) + "\n"


def _tested_on(k: dict) -> str:
    parts = [f"base {k['base'][:12]}" if k.get("base") else "", str(k.get("source") or "")]
    where = ", ".join(w for w in parts if w)
    out = f"Linux {k.get('version', '?')}" + (f" ({where})" if where else "")
    return out + (f" in QEMU ({k['accel']})" if k.get("accel") else "")


def _basename(p: object) -> str:
    return Path(str(p)).name


def _pct(v: object) -> str:
    return f"{v:+.1f}%" if isinstance(v, (int, float)) else "?"


def _num(v: object) -> str:
    return (f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}") if isinstance(v, (int, float)) else str(v)


FILTERS = {"obsdiff": _obs_diff, "basename": _basename, "pct": _pct, "num": _num}


def render(report: dict, bench: dict | None = None, fragments: tuple[Path, ...] = ()) -> str:
    tests = report.get("tests", [])
    by = {s: [t for t in tests if t.get("status") == s] for s in ("fixed", "regressed", "flaky", "diverges", "error", "match")}
    splats = report.get("splats") or {}
    text = templates.render("coverletter.txt.j2", filters=FILTERS,
        r=report, tested_on=_tested_on(report.get("kernel", {})), kernel=report.get("kernel", {}), patches=report.get("patches", []), by=by,
        splats={"baseline": splats.get("baseline", []), "patched": splats.get("patched", []),
                "new": splats.get("new", [])},
        config=config_summary(report, fragments), bench=(bench or {}).get("metrics") if bench else None,
        checks=report.get("checks"))
    return _wrap(text)
