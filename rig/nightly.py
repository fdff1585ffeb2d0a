"""`kproto nightly CONFIG.toml`: every series on every configured kernel through `kproto test` (and optionally
`kproto bench` / `kproto fuzz`), recorded in the SQLite history (rig/store.py), diffed against the last
complete run, and reported as HTML, JSON, JUnit per series and a plain-text summary for an email body.

Exit codes: 0 nothing regressed since the last complete run; 1 something regressed; 2 bad config;
3 infrastructure (another nightly holds the lock, a kernel would not build, a series hit a rig error).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .locks import LockBusy, locked
from . import patches as patchmod
from .errors import (EXIT_CLEAN, EXIT_INFRA, EXIT_REGRESSED, BadInput, BootError, BuildError, InfraError,
                     KprotoError, PatchError)
from .store import STAGE_RANK, SeriesRecord, Store, finding_key, now_iso, same_splat, splat_key

DEFAULT_HISTORY = 14
DEFAULT_NOISE_PCT = 5.0
OK_STATUSES = ("match", "fixed")


class NightlyBusy(InfraError):
    """Another `kproto nightly` holds the lock of this history database."""


# ================================================================ config

@dataclass
class KernelCfg:
    name: str
    source: str | None              # None: the default Debian linux-source-6.12
    config: tuple[Path, ...] = ()


@dataclass
class SeriesCfg:
    name: str
    paths: list[Path]
    kernels: list[str]
    tests: str | None = None
    kvm: bool = False                 # KVM-only: its cells run only on workers offering the `kvm` resource


@dataclass
class NightlyConfig:
    path: Path | None
    output: Path
    db: Path
    kernels: list[KernelCfg]
    series: list[SeriesCfg]
    tests: str | None = None
    timeout: float | None = None
    bench: bool = False
    fuzz_budget_s: float = 0.0
    history: int = DEFAULT_HISTORY
    bench_noise_pct: float = DEFAULT_NOISE_PCT
    raw: dict = field(default_factory=dict)
    cluster: object = None            # rig.cluster.ClusterCfg: where the matrix runs (not part of the digest)

    @property
    def lock_path(self) -> Path:
        return self.db.with_name(self.db.name + ".lock")

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True, default=str).encode()).hexdigest()


_TOP_KEYS = {"output", "db", "tests", "timeout", "bench", "fuzz_budget_s", "history", "bench_noise_pct",
             "kernel", "series", "cluster"}
_KERNEL_KEYS = {"name", "source", "config"}
_SERIES_KEYS = {"name", "paths", "kernel", "kernels", "tests", "kvm"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def _want(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise BadInput(f"{where}: {msg}")


def load_config(path: Path | str) -> NightlyConfig:
    """Parse and validate CONFIG.toml; relative paths are relative to the config file. BadInput (exit 2)
    names the file and the offending key."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"nightly config not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{path}: not valid TOML: {e}") from None
    return parse_config(raw, path)


def parse_config(raw: dict, path: Path | None = None) -> NightlyConfig:
    where = str(path) if path else "config"
    here = path.resolve().parent if path else Path.cwd()

    def rel(p: str) -> Path:
        q = Path(str(p)).expanduser()
        return q if q.is_absolute() else (here / q)

    unknown = set(raw) - _TOP_KEYS
    _want(not unknown, where, f"unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(_TOP_KEYS))})")
    _want(isinstance(raw.get("output"), str) and raw["output"], where, "`output` (report directory) is required")
    output = rel(raw["output"])
    db = rel(raw["db"]) if raw.get("db") else output / "history.sqlite"
    _want(isinstance(raw.get("db", ""), str), where, "`db` must be a path string")
    tests = raw.get("tests")
    _want(tests is None or (isinstance(tests, str) and tests.strip()), where, "`tests` must be a -k pattern string")
    timeout = raw.get("timeout")
    _want(timeout is None or (isinstance(timeout, (int, float)) and timeout > 0), where, "`timeout` must be seconds > 0")
    bench = raw.get("bench", False)
    _want(isinstance(bench, bool), where, "`bench` must be true or false")
    fuzz = raw.get("fuzz_budget_s", 0)
    _want(isinstance(fuzz, (int, float)) and fuzz >= 0, where, "`fuzz_budget_s` must be seconds >= 0")
    hist = raw.get("history", DEFAULT_HISTORY)
    _want(isinstance(hist, int) and 1 <= hist <= 365, where, "`history` must be a number of runs, 1..365")
    noise = raw.get("bench_noise_pct", DEFAULT_NOISE_PCT)
    _want(isinstance(noise, (int, float)) and noise >= 0, where, "`bench_noise_pct` must be >= 0")

    kernels: list[KernelCfg] = []
    kraw = raw.get("kernel", [{"name": "default"}])
    _want(isinstance(kraw, list) and kraw, where, "`[[kernel]]` must be a non-empty array of tables")
    for i, k in enumerate(kraw):
        kw = f"{where}: kernel {i + 1}"
        _want(isinstance(k, dict), kw, "must be a table")
        unknown = set(k) - _KERNEL_KEYS
        _want(not unknown, kw, f"unknown key(s) {', '.join(sorted(unknown))}")
        name = k.get("name", "default" if len(kraw) == 1 else None)
        _want(isinstance(name, str) and bool(_NAME.match(name)), kw, "needs a `name` (letters, digits, . _ + -)")
        src = k.get("source")
        _want(src is None or isinstance(src, str), kw, "`source` must be a path string")
        if src in (None, "", "default"):
            source = None
        else:
            sp = rel(src)
            _want(sp.exists(), kw, f"source {src!r} does not exist (a kernel git tree or a source tarball)")
            source = str(sp)
        frags = k.get("config", [])
        _want(isinstance(frags, list) and all(isinstance(f, str) for f in frags), kw, "`config` must be a list of fragment paths")
        fpaths = tuple(rel(f) for f in frags)
        for f in fpaths:
            _want(f.is_file(), kw, f"config fragment {f} not found")
        _want(name not in {x.name for x in kernels}, kw, f"duplicate kernel name {name!r}")
        kernels.append(KernelCfg(name=name, source=source, config=fpaths))

    series: list[SeriesCfg] = []
    sraw = raw.get("series")
    _want(isinstance(sraw, list) and sraw, where, "at least one `[[series]]` table (name + paths) is required")
    knames = [k.name for k in kernels]
    for i, s in enumerate(sraw):
        sw = f"{where}: series {i + 1}"
        _want(isinstance(s, dict), sw, "must be a table")
        unknown = set(s) - _SERIES_KEYS
        _want(not unknown, sw, f"unknown key(s) {', '.join(sorted(unknown))}")
        name = s.get("name")
        _want(isinstance(name, str) and bool(_NAME.match(name)), sw, "needs a `name` (letters, digits, . _ + -)")
        sw = f"{where}: series {name!r}"
        _want(name not in {x.name for x in series}, sw, "duplicate series name")
        paths = s.get("paths")
        if isinstance(paths, str):
            paths = [paths]
        _want(isinstance(paths, list) and paths and all(isinstance(p, str) for p in paths), sw,
              "`paths` must list patch files, directories of git format-patch output or mboxes")
        ppaths = [rel(p) for p in paths]
        for p in ppaths:
            _want(p.exists(), sw, f"{p} does not exist")
        try:
            patchmod.expand(ppaths)
        except BadInput as e:
            raise BadInput(f"{sw}: {e.message}") from None
        ks = s.get("kernels", s.get("kernel", knames))
        if isinstance(ks, str):
            ks = [ks]
        _want(isinstance(ks, list) and ks and all(k in knames for k in ks), sw,
              f"`kernels` must name configured kernels ({', '.join(knames)})")
        st = s.get("tests", tests)
        _want(st is None or (isinstance(st, str) and st.strip()), sw, "`tests` must be a -k pattern string")
        kvm = s.get("kvm", False)
        _want(isinstance(kvm, bool), sw, "`kvm` must be true or false")
        series.append(SeriesCfg(name=name, paths=ppaths, kernels=list(ks), tests=st, kvm=kvm))

    from .guest import harness
    from .paths import GUEST_TESTS
    specs = harness.load_specs(GUEST_TESTS)
    for pat in {s.tests for s in series}:
        if not harness.select(specs, pat):
            raise BadInput(f"{where}: tests = {pat!r} selects no guest test (see guest_tests/*.toml for names)")

    # ---- cluster hook (rig/cluster.py): where the matrix runs, which never changes what it computes
    from .cluster import parse_cluster
    ccfg = parse_cluster(raw.get("cluster"), where, rel)

    canon = dict(raw)
    canon.pop("cluster", None)
    canon["_resolved"] = {"kernels": [(k.name, k.source, [str(f) for f in k.config]) for k in kernels],
                          "series": [(s.name, [str(p) for p in s.paths], s.kernels, s.tests) for s in series]}
    return NightlyConfig(path=path.resolve() if path else None, output=output, db=db, kernels=kernels, series=series,
                         tests=tests, timeout=float(timeout) if timeout else None, bench=bench,
                         fuzz_budget_s=float(fuzz), history=hist, bench_noise_pct=float(noise), raw=canon,
                         cluster=ccfg)


# ================================================================ lock

@contextlib.contextmanager
def nightly_lock(path: Path) -> Iterator[None]:
    """Exclusive, non-blocking flock next to the history database: a second nightly fails at once."""
    try:
        with locked(path, "the nightly lock", wait=False):
            yield
    except LockBusy as e:
        raise NightlyBusy(f"another kproto nightly is running (pid {e.holder} holds {path}); "
                          "not starting a second one") from None


# ================================================================ diff against the last complete run

def _ok(t: dict) -> bool:
    return t.get("status") in OK_STATUSES or (t.get("status") == "diverges" and bool(t.get("known")))


def higher_is_better(unit: str | None, better: str | None = None) -> bool | None:
    """Direction of a bench metric: kproto bench's `better` ("higher"/"lower") when given, else by unit."""
    if better in ("higher", "lower"):
        return better == "higher"
    u = (unit or "").strip().lower()
    if u.endswith("/s") or u in ("ops", "iops", "ops/sec") or "per s" in u:
        return True
    if u in ("s", "ms", "us", "µs", "ns", "sec", "seconds", "cycles") or u.endswith("/op"):
        return False
    return None


def _ch(kind: str, severity: str, rec: SeriesRecord | None = None, subject: str | None = None, before=None,
        after=None, detail: str | None = None, kernel: str | None = None) -> dict:
    return {"kind": kind, "severity": severity, "kernel": rec.kernel if rec else kernel,
            "series": rec.name if rec else None, "subject": subject, "before": before, "after": after,
            "detail": detail}


def _unique_splats(splats: list[dict]) -> list[dict]:
    """One dict per splat identity (signature, else title), first one kept."""
    out: dict[str, dict] = {}
    for s in splats:
        out.setdefault(splat_key(s), s)
    return list(out.values())


def diff(prev: list[SeriesRecord] | None, cur: list[SeriesRecord], noise_pct: float = DEFAULT_NOISE_PCT,
         prev_kernels: list[dict] | None = None, cur_kernels: list[dict] | None = None) -> list[dict]:
    """What changed since the previous complete run, one dict per change:
    kind, severity (regression | improvement | info), kernel, series, subject, before, after, detail.

    Regressions: a series that stopped applying / building / booting; a test that was ok (match, fixed,
    known divergence) and is not any more; a splat (by signature; by title for history rows recorded
    before signatures existed) the series' patched kernel did not show last time;
    a bench metric whose patched-vs-baseline change moved outside the noise band in the bad direction.
    """
    out: list[dict] = []
    if prev is None:
        return out
    pk = {k["name"]: k for k in prev_kernels or []}
    for k in cur_kernels or []:
        p = pk.get(k["name"])
        if p and (p.get("version"), p.get("commit_id")) != (k.get("version"), k.get("commit_id")):
            out.append(_ch("kernel-changed", "info", kernel=k["name"], subject=k["name"],
                           before=f"{p.get('version')} {str(p.get('commit_id') or '')[:12]}",
                           after=f"{k.get('version')} {str(k.get('commit_id') or '')[:12]}"))
    pmap = {(s.kernel, s.name): s for s in prev}
    seen = set()
    for c in cur:
        p = pmap.get((c.kernel, c.name))
        seen.add((c.kernel, c.name))
        if p is None:
            out.append(_ch("series-added", "info", c, after=c.outcome))
            continue
        if p.series_hash and c.series_hash and p.series_hash != c.series_hash:
            out.append(_ch("series-patches-changed", "info", c, before=p.series_hash[:12], after=c.series_hash[:12],
                           detail=", ".join(Path(x["path"]).name for x in c.patches)))
        # series level: how far it got
        if c.outcome == "error":
            if p.outcome != "error":
                out.append(_ch("series-error", "info", c, before=p.outcome, after="error", detail=c.error))
        elif p.outcome != "error" and STAGE_RANK[c.outcome] < STAGE_RANK[p.outcome]:
            kind = {"apply-failed": "series-stopped-applying", "build-failed": "series-stopped-building",
                    "boot-failed": "series-stopped-booting"}[c.outcome]
            out.append(_ch(kind, "regression", c, before=p.outcome, after=c.outcome, detail=c.error))
        elif p.outcome != "error" and STAGE_RANK[c.outcome] > STAGE_RANK[p.outcome]:
            out.append(_ch("series-recovered", "improvement", c, before=p.outcome, after=c.outcome))
        elif p.outcome == "error" and c.outcome != "error":
            out.append(_ch("series-recovered", "info", c, before="error", after=c.outcome))
        if c.outcome != "tested":
            continue
        both = p.outcome == "tested"
        # tests
        if both:
            pt = {t["name"]: t for t in p.tests}
            ct = {t["name"]: t for t in c.tests}
            for name in sorted(ct):
                t = ct[name]
                if name not in pt:
                    out.append(_ch("test-added", "info", c, name, after=t["status"]))
                    continue
                before = pt[name]
                if _ok(before) and not _ok(t):
                    out.append(_ch("test-newly-failing", "regression", c, name, before["status"], t["status"],
                                   detail=_diff_detail(t)))
                elif not _ok(before) and _ok(t):
                    out.append(_ch("test-newly-fixed", "improvement", c, name, before["status"], t["status"]))
                elif before["status"] != t["status"]:
                    out.append(_ch("test-status-changed", "info", c, name, before["status"], t["status"]))
            for name in sorted(set(pt) - set(ct)):
                out.append(_ch("test-removed", "info", c, name, before=pt[name]["status"]))
        # splats: by signature (a lockdep cycle closed by another edge gets another title, same signature),
        # by title for rows recorded before signatures existed; the title is the subject shown
        cur_sp = _unique_splats(c.splats.get("patched", []))
        base_sp = c.splats.get("baseline", [])
        if both:
            prev_sp = _unique_splats(p.splats.get("patched", []))
            for s in sorted(cur_sp, key=lambda s: s.get("title", "")):
                if not any(same_splat(s, q) for q in prev_sp):
                    out.append(_ch("new-splat", "regression", c, s.get("title"), after=s.get("kind"),
                                   detail="also in the baseline kernel" if any(same_splat(s, b) for b in base_sp)
                                   else None))
            for q in sorted(prev_sp, key=lambda s: s.get("title", "")):
                if not any(same_splat(q, s) for s in cur_sp):
                    out.append(_ch("splat-gone", "improvement", c, q.get("title")))
        else:
            for s in c.splats.get("new", []):
                out.append(_ch("new-splat", "regression", c, s["title"], after=s.get("kind")))
        # bench
        pb = {m["name"]: m for m in p.bench}
        for m in c.bench:
            q = pb.get(m["name"])
            if q is None or m.get("change_pct") is None or q.get("change_pct") is None:
                continue
            ch = bench_change(q, m, noise_pct)
            if ch is None:
                continue
            delta, band = ch
            better = higher_is_better(m.get("unit"), m.get("better"))
            sev = "info" if better is None else ("improvement" if (delta > 0) == better else "regression")
            out.append(_ch("bench-change", sev, c, m["name"], f"{q['change_pct']:+.1f}%", f"{m['change_pct']:+.1f}%",
                           detail=f"patched vs baseline moved {delta:+.1f} points (noise band ±{band:.1f}); "
                                  f"patched median {_num(q.get('patched_median'))} -> {_num(m.get('patched_median'))} {m.get('unit') or ''}".strip()))
        # fuzz
        pf = {finding_key(f) for f in p.findings}
        for f in c.findings:
            if finding_key(f) not in pf:
                out.append(_ch("new-fuzz-finding", "info", c, finding_key(f), detail=f.get("reproducer")))
    for key in pmap:
        if key not in seen:
            p = pmap[key]
            out.append(_ch("series-removed", "info", p, before=p.outcome))
    return out


def bench_change(prev: dict, cur: dict, noise_pct: float) -> tuple[float, float] | None:
    """(delta, band) when the metric's patched-vs-baseline change moved by more than the noise band:
    the larger of NOISE_PCT and the half-widths of either run's 95% confidence interval. Comparing the
    change against the same night's baseline cancels machine-speed drift between nights."""
    delta = float(cur["change_pct"]) - float(prev["change_pct"])
    halves = [noise_pct]
    for m in (prev, cur):
        ci = m.get("ci95_pct") or [None, None]
        if ci[0] is not None and ci[1] is not None:
            halves.append(abs(float(ci[1]) - float(ci[0])) / 2)
    band = max(halves)
    return (delta, band) if abs(delta) > band else None


def _num(v) -> str:
    if v is None:
        return "?"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _diff_detail(t: dict) -> str | None:
    ds = [d for d in t.get("diffs") or [] if d.get("patched") != d.get("reference")] or t.get("diffs") or []
    if ds:
        return "; ".join(f"{d['key']}: reference {d.get('reference')!s}, patched {d.get('patched')!s}" for d in ds[:4])
    return t.get("reason")


def exit_code_for(changes: list[dict], series: list[SeriesRecord], kernel_errors: list[str]) -> int:
    if any(c["severity"] == "regression" for c in changes):
        return EXIT_REGRESSED
    if kernel_errors or any(s.outcome == "error" for s in series):
        return EXIT_INFRA
    return EXIT_CLEAN


# ================================================================ running one series

def _one_line(e: BaseException) -> str:
    msg = e.message if isinstance(e, KprotoError) else f"{type(e).__name__}: {e}"
    return " ".join(str(msg).split())[:500]


def run_series(kernel: KernelCfg, s: SeriesCfg, cfg: NightlyConfig, say: Callable[[str], None],
               test_fn: Callable | None = None) -> SeriesRecord:
    """kproto test for one series on one kernel; the failure stage from the exception kproto test raises."""
    from . import testrun
    test_fn = test_fn or testrun.run
    plist = patchmod.expand(s.paths)
    rec = SeriesRecord(kernel=kernel.name, name=s.name, outcome="error", started=now_iso(),
                       patches=[{"path": str(p.path), "sha256": p.sha256, "subject": p.subject} for p in plist],
                       series_hash=patchmod.series_digest(plist))
    opts = testrun.TestOptions(patches=list(s.paths), kernel_src=kernel.source, config=kernel.config,
                               pattern=s.tests, timeout=cfg.timeout, progress=say)
    try:
        rep = test_fn(opts)
    except PatchError as e:
        rec.outcome, rec.error = "apply-failed", _one_line(e)
    except BuildError as e:
        rec.outcome, rec.error = "build-failed", _one_line(e)
    except BootError as e:
        rec.outcome, rec.error = "boot-failed", _one_line(e)
    except KprotoError as e:
        rec.outcome, rec.error = "error", _one_line(e)
    except Exception as e:   # a rig bug must not cost the other series their night
        rec.outcome, rec.error = "error", _one_line(e)
        say("internal error:\n" + traceback.format_exc())
    else:
        j = rep.as_json()
        rec.outcome, rec.verdict = "tested", j["verdict"]
        rec.kernel_version = (j.get("kernel") or {}).get("version")
        rec.tests, rec.splats, rec.timings = j["tests"], j["splats"], j["timings"]
        rec.verdicts = rep.verdicts    # for JUnit
        if rec.verdict == "error":
            rec.error = "; ".join(j.get("reasons") or []) or None
    if rec.error:
        say(f"{rec.outcome}: {rec.error}")
    rec.finished = now_iso()
    return rec


def _kproto_subcommand(args: list[str], say: Callable[[str], None], timeout: float) -> tuple[int, str]:
    """Run `kproto ARGS` in a child process (the JSON contracts of DESIGN.md §4)."""
    cmd = [sys.executable, "-c", "from rig.cli import main; main()", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except BaseException as e:
        # SIGTERM first: the child unwinds like Ctrl-C and reaps its own VMs; SIGKILL only if it hangs
        proc.terminate()
        try:
            proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if isinstance(e, subprocess.TimeoutExpired):
            return 124, f"kproto {args[0]} timed out after {timeout:.0f} s"
        raise
    if proc.returncode != 0:
        say(f"kproto {args[0]} exit {proc.returncode}: {err.strip().splitlines()[-1:]}")
    return proc.returncode, err


def run_bench(kernel: KernelCfg, s: SeriesCfg, say: Callable[[str], None]) -> tuple[list[dict], str | None]:
    """`kproto bench --json` for the series; (metrics, error)."""
    with tempfile.TemporaryDirectory(prefix="kproto-nightly-bench-") as d:
        out = Path(d) / "bench.json"
        args = ["bench", "--json", str(out), *map(str, s.paths)]
        if kernel.source:
            args += ["--kernel-src", kernel.source]
        for f in kernel.config:
            args += ["--config", str(f)]
        rc, err = _kproto_subcommand(args, say, timeout=3 * 3600)
        if not out.is_file():
            last = [l for l in err.strip().splitlines() if l.strip()][-1:] or [f"exit {rc}"]
            return [], f"kproto bench produced no JSON (exit {rc}): {last[0][:300]}"
        try:
            metrics = json.loads(out.read_text())["metrics"]
            assert isinstance(metrics, list)
        except (ValueError, KeyError, AssertionError):
            return [], "kproto bench --json output lacks a metrics list"
        return metrics, None


def run_fuzz(kernel: KernelCfg, s: SeriesCfg, budget_s: float, say: Callable[[str], None],
             findings_dir: Path) -> tuple[list[dict], str | None]:
    """A fixed-budget, fixed-seed `kproto fuzz --target kernel --json` on the series' patched kernel;
    reproducers land in FINDINGS_DIR (no guest tests are written). Returns (findings, error)."""
    with tempfile.TemporaryDirectory(prefix="kproto-nightly-fuzz-") as d:
        out = Path(d) / "fuzz.json"
        args = ["fuzz", "--target", "kernel", "--json", str(out), "--budget", f"{int(budget_s)}s", "--seed", "1",
                "--findings", str(findings_dir), "--no-tests", *map(str, s.paths)]
        if kernel.source:
            args += ["--kernel-src", kernel.source]
        for f in kernel.config:
            args += ["--config", str(f)]
        rc, err = _kproto_subcommand(args, say, timeout=budget_s + 3600)
        if not out.is_file():
            last = [l for l in err.strip().splitlines() if l.strip()][-1:] or [f"exit {rc}"]
            return [], f"kproto fuzz produced no JSON (exit {rc}): {last[0][:300]}"
        try:
            return list(json.loads(out.read_text()).get("findings", [])), None
        except (ValueError, AttributeError):
            return [], "kproto fuzz --json output is not a JSON object"


# ================================================================ the run

@dataclass
class NightlyResult:
    run_id: int
    exit_code: int
    report_dir: Path
    changes: list[dict]
    series: list[SeriesRecord]
    summary: str


def run(cfg: NightlyConfig, say: Callable[[str], None] | None = None, test_fn: Callable | str | None = None,
        kernel_fn: Callable | str | None = None, scheduler: str | None = None) -> NightlyResult:
    """One nightly run under the lock. TEST_FN (kproto test's run) and KERNEL_FN (kernel name/version/commit
    and baseline build) are replaceable for tests without a VM: Python objects run in-process (embedded
    cluster only), 'module:function' strings wherever the Dask workers can import them. SCHEDULER (or the
    config's [cluster] scheduler): a Dask scheduler to run the matrix on instead of the embedded cluster."""
    say = say or (lambda m: print(f"kproto nightly: {m}", file=sys.stderr))
    with nightly_lock(cfg.lock_path):
        # ---- cluster hook (rig/nightly_graph.py): the cluster is up, or an unreachable scheduler has
        # failed the run (exit 3), before anything is written
        from . import nightly_graph
        with nightly_graph.engine(cfg, say, scheduler=scheduler, test_fn=test_fn, kernel_fn=kernel_fn) as eng:
            store = Store.open(cfg.db)
            try:
                return _run_locked(cfg, store, say, eng)
            finally:
                store.close()


def prepare_kernel(k: KernelCfg, say: Callable[[str], None]) -> dict:
    """Open the source (a git tree at its current HEAD) and build the baseline once, so that a BuildError
    of a series later is the series' own. Returns {"source", "version", "commit_id"}; raises on failure."""
    from . import build as buildmod
    from . import tree as treemod
    tree = treemod.open_source(k.source)
    say(f"kernel {k.name}: linux {tree.version()} at {tree.base[:12]} ({tree.origin})")
    kern = buildmod.build(tree, [], k.config, progress=say)
    say(f"kernel {k.name}: baseline " + ("cached" if kern.cached else f"built in {kern.build_s:.0f} s"))
    return {"source": tree.origin, "version": kern.version, "commit_id": tree.base}


def _run_locked(cfg: NightlyConfig, store: Store, say, eng) -> NightlyResult:
    gone = store.mark_abandoned()
    if gone:
        say(f"earlier run(s) {', '.join(map(str, gone))} died without recording an end: marked abandoned (incomplete)")
    started = now_iso()
    run_id = store.begin_run(cfg.digest(), str(cfg.path) if cfg.path else None, socket.gethostname(), os.getpid(),
                             started=started)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    report_dir = cfg.output / "runs" / f"{run_id:05d}-{stamp}"
    report_dir.mkdir(parents=True, exist_ok=True)
    store.set_run(run_id, report_dir=str(report_dir))
    log = open(report_dir / "nightly.log", "a", buffering=1)

    def log_say(msg: str) -> None:
        log.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
        say(msg)

    try:
        prev = store.last_complete_run(before=run_id)
        if prev:
            store.set_run(run_id, previous_run=prev["id"])
        log_say(f"run {run_id} started; " + (f"comparing with run {prev['id']} ({prev['started']})" if prev
                                             else "no earlier complete run to compare with"))
        records: list[SeriesRecord] = []
        kernel_errors: list[str] = []
        kernels_info: list[dict] = []
        # ---- graph hook (rig/nightly_graph.py): the whole matrix is submitted to the Dask cluster now; the
        # loop below waits for it in matrix order, and this process alone writes the history
        matrix = eng.start(cfg, report_dir, log_say)
        for k in cfg.kernels:
            series = [s for s in cfg.series if k.name in s.kernels]
            try:
                info = matrix.kernel(k)
            except KeyboardInterrupt:
                raise
            except Exception as e:
                msg = _one_line(e)
                kernel_errors.append(f"kernel {k.name}: {msg}")
                store.add_kernel(run_id, k.name, k.source or "default", error=msg)
                kernels_info.append({"name": k.name, "source": k.source or "default", "error": msg})
                log_say(f"kernel {k.name}: {msg}; its {len(series)} series are not run")
                for s in series:
                    plist = patchmod.expand(s.paths)
                    rec = SeriesRecord(kernel=k.name, name=s.name, outcome="error", error=f"kernel {k.name}: {msg}",
                                       patches=[{"path": str(p.path), "sha256": p.sha256, "subject": p.subject} for p in plist],
                                       series_hash=patchmod.series_digest(plist), started=now_iso())
                    store.add_series(run_id, rec)
                    records.append(rec)
                continue
            store.add_kernel(run_id, k.name, info.get("source"), info.get("version"), info.get("commit_id"))
            kernels_info.append({"name": k.name, **info})
            for s in series:
                log_say(f"series {s.name} on {k.name}: {len(s.paths)} path(s), tests {s.tests or '(all)'}")
                rec = matrix.series(k, s)        # kproto test, then bench / fuzz when configured
                rec.kernel_version = rec.kernel_version or info.get("version")
                store.add_series(run_id, rec)
                records.append(rec)
                log_say(f"series {s.name}: {rec.outcome}" + (f" ({rec.verdict})" if rec.verdict else "")
                        + f" in {matrix.took(k, s):.0f} s")
        prev_series = store.load_series(prev["id"]) if prev else None
        changes = diff(prev_series, records, cfg.bench_noise_pct,
                       store.kernels(prev["id"]) if prev else None, store.kernels(run_id))
        store.add_changes(run_id, changes)
        code = exit_code_for(changes, records, kernel_errors)
        finished = now_iso()
        run_row = store.run(run_id) | {"finished": finished, "complete": 1, "state": "complete", "exit_code": code}
        summary = write_reports(report_dir, store, cfg, run_row, prev, kernels_info, records, changes,
                                           kernel_errors)
        matrix.amend_reports(report_dir)        # graph hook: which worker ran what, with which accel
        store.finish_run(run_id, code)
        _link_latest(cfg.output, report_dir)
        log_say(f"run {run_id} complete: exit {code}; reports in {report_dir}")
        return NightlyResult(run_id=run_id, exit_code=code, report_dir=report_dir, changes=changes, series=records,
                             summary=summary)
    except KeyboardInterrupt:
        store.fail_run(run_id, "interrupted (SIGINT/SIGTERM) before the run completed", interrupted=True,
                       exit_code=EXIT_INFRA)
        log_say(f"run {run_id} interrupted: stored as incomplete")
        raise
    except BaseException as e:
        store.fail_run(run_id, _one_line(e), exit_code=getattr(e, "exit_code", EXIT_INFRA))
        log_say(f"run {run_id} failed: {_one_line(e)}: stored as incomplete")
        raise
    finally:
        log.close()


def _link_latest(output: Path, report_dir: Path) -> None:
    link = output / "latest"
    tmp = output / f".latest.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(os.path.relpath(report_dir, output), tmp)
    os.replace(tmp, link)


# ================================================================ reports

SEVERITY_ORDER = {"regression": 0, "improvement": 1, "info": 2}
_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def _change_text(c: dict, with_kernel: bool = False) -> str:
    if c.get("series"):
        who = c["series"] + (f" [{c['kernel']}]" if with_kernel and c.get("kernel") else "")
    else:
        who = c.get("kernel") or ""
    k = c["kind"]
    subj, before, after = c.get("subject"), c.get("before"), c.get("after")
    phrases = {
        "series-stopped-applying": f"no longer applies (last run: {before})",
        "series-stopped-building": f"no longer builds (last run: {before})",
        "series-stopped-booting": f"no longer boots (last run: {before})",
        "series-recovered": f"gets further again: {before} -> {after}",
        "series-error": f"rig error (last run: {before})",
        "series-added": f"new series ({after})",
        "series-removed": f"series gone from the config (last run: {before})",
        "series-patches-changed": f"patches changed ({before} -> {after})",
        "kernel-changed": f"kernel moved: {before} -> {after}",
        "test-newly-failing": f"test {subj}: {before} -> {after}",
        "test-newly-fixed": f"test {subj}: {before} -> {after}",
        "test-status-changed": f"test {subj}: {before} -> {after}",
        "test-added": f"test {subj} added ({after})",
        "test-removed": f"test {subj} no longer run (was {before})",
        "new-splat": f"new splat: {subj}",
        "splat-gone": f"splat gone: {subj}",
        "bench-change": f"bench {subj}: {before} -> {after} vs baseline",
        "new-fuzz-finding": f"new fuzz finding: {subj}",
    }
    fallback = f"{k} {subj or ''} {before or ''} -> {after or ''}"
    text = f"{who}: {phrases.get(k, fallback)}"
    if c.get("detail"):
        text += f"\n      {c['detail']}"
    return text


def _dur(a: str | None, b: str | None) -> str:
    if not a or not b:
        return "?"
    try:
        s = int(time.mktime(time.strptime(b, "%Y-%m-%dT%H:%M:%SZ")) - time.mktime(time.strptime(a, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return "?"
    return f"{s // 60}m{s % 60:02d}s"


def series_line(r: SeriesRecord) -> str:
    if r.outcome == "tested":
        counts: dict[str, int] = {}
        for t in r.tests:
            counts[t["status"]] = counts.get(t["status"], 0) + 1
        what = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no tests"
        sp = len(r.splats.get("new", []))
        return f"tested, {r.verdict}: {what}" + (f"; {sp} new splat(s) vs baseline" if sp else "")
    return f"{r.outcome}: {r.error or ''}".rstrip(": ")


def text_summary(run_row: dict, prev: dict | None, kernels: list[dict], records: list[SeriesRecord],
                 changes: list[dict], kernel_errors: list[str], report_dir: Path | None = None) -> str:
    """The plain-text summary: the email body."""
    reg = [c for c in changes if c["severity"] == "regression"]
    imp = [c for c in changes if c["severity"] == "improvement"]
    info = [c for c in changes if c["severity"] == "info"]
    code = run_row.get("exit_code")
    state = {EXIT_CLEAN: "OK", EXIT_REGRESSED: "REGRESSED", EXIT_INFRA: "INFRA ERROR"}.get(code, str(code))
    L = [f"kproto nightly run {run_row['id']}: {state} -- {len(reg)} regression(s), {len(imp)} improvement(s)"]
    L.append(f"started {run_row['started']}, finished {run_row.get('finished') or '-'} "
             f"({_dur(run_row['started'], run_row.get('finished'))}) on {run_row.get('host') or '?'}")
    L.append(f"compared with run {prev['id']} of {prev['started']}" if prev else "first complete run: nothing to compare with")
    for k in kernels:
        if k.get("error"):
            L.append(f"kernel {k['name']}: ERROR {k['error']}")
        else:
            L.append(f"kernel {k['name']}: linux {k.get('version')} at {str(k.get('commit_id') or '')[:12]} ({k.get('source')})")
    L.append("")
    for title, group in (("REGRESSIONS", reg), ("IMPROVEMENTS", imp), ("OTHER CHANGES", info)):
        if group:
            L.append(f"{title} ({len(group)}):")
            L.extend(f"  - {_change_text(c, len(kernels) > 1)}" for c in group)
            L.append("")
    if not changes and prev:
        L.extend(["no changes since the last complete run", ""])
    L.append("SERIES:")
    w = max([len(r.name) for r in records] + [6])
    for r in records:
        kn = f" [{r.kernel}]" if len(kernels) > 1 else ""
        L.append(f"  {r.name:<{w}}{kn}  {series_line(r)}")
        for n in r.notes:
            L.append(f"  {'':<{w}}  note: {n}")
    for e in kernel_errors:
        L.append(f"  infra: {e}")
    if report_dir:
        L += ["", f"report: {report_dir / 'report.html'}", f"json:   {report_dir / 'report.json'}",
              f"junit:  {report_dir / 'junit'}/"]
    L.append(f"exit {code}")
    return "\n".join(L) + "\n"


def _record_json(r: SeriesRecord) -> dict:
    return {"kernel": r.kernel, "name": r.name, "outcome": r.outcome, "stages": r.stages(), "verdict": r.verdict,
            "error": r.error, "notes": r.notes, "kernel_version": r.kernel_version, "patches": r.patches,
            "series_hash": r.series_hash, "tests": r.tests, "splats": r.splats, "timings": r.timings,
            "bench": r.bench, "findings": r.findings, "started": r.started, "finished": r.finished}


def report_json(run_row: dict, prev: dict | None, kernels: list[dict], records: list[SeriesRecord],
                changes: list[dict]) -> dict:
    keep = ("id", "started", "finished", "complete", "state", "exit_code", "config_path", "config_hash", "host",
            "report_dir")
    return {"run": {k: run_row.get(k) for k in keep}, "previous_run": prev["id"] if prev else None,
            "kernels": kernels, "series": [_record_json(r) for r in records], "changes": changes,
            "summary": {"regressions": sum(c["severity"] == "regression" for c in changes),
                        "improvements": sum(c["severity"] == "improvement" for c in changes),
                        "series_errors": sum(r.outcome == "error" for r in records)},
            "exit_code": run_row.get("exit_code")}


def junit_for(r: SeriesRecord) -> str:
    """JUnit per series: the kproto test verdicts, or one failing `<stage>` case when the series did not get
    as far as the tests."""
    from xml.sax.saxutils import escape, quoteattr
    suite = f"nightly.{r.kernel}.{r.name}"
    if r.outcome == "tested":
        from . import compare
        verdicts = r.verdicts or [_verdict_from_json(t) for t in r.tests]
        return compare.to_junit(verdicts, suite)
    stage = {"apply-failed": "apply", "build-failed": "build", "boot-failed": "boot"}.get(r.outcome, "rig")
    tag = "error" if r.outcome == "error" else "failure"
    return ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            f"<testsuites name={quoteattr(suite)} tests=\"1\" failures=\"{int(tag == 'failure')}\" errors=\"{int(tag == 'error')}\">\n"
            f"  <testsuite name={quoteattr(suite)} tests=\"1\" failures=\"{int(tag == 'failure')}\" errors=\"{int(tag == 'error')}\" skipped=\"0\">\n"
            f"    <testcase classname={quoteattr(suite)} name={quoteattr(stage)}>\n"
            f"      <{tag} message={quoteattr(r.outcome + ': ' + (r.error or ''))}>{escape(r.error or '')}</{tag}>\n"
            "    </testcase>\n  </testsuite>\n</testsuites>\n")


def _verdict_from_json(t: dict):
    from . import compare
    return compare.TestVerdict(name=t["name"], status=t["status"], known=t.get("known"),
                               diffs=[compare.ObsDiff(d["key"], d.get("reference"), d.get("baseline"), d.get("patched"))
                                      for d in t.get("diffs") or []],
                               reference=t.get("reference") or {}, baseline=t.get("baseline") or {},
                               patched=t.get("patched") or {}, reason=t.get("reason"))


def sparkline(values: list[float | None], width: int = 180, height: int = 44, pad: int = 5) -> dict:
    """SVG geometry of a small line chart: {"points", "dots": [(x, y, value)], "zero_y"} (None values skipped)."""
    n = len(values)
    real = [v for v in values if v is not None]
    if not real:
        return {"points": "", "dots": [], "zero_y": None, "width": width, "height": height}
    lo, hi = min(real + [0.0]), max(real + [0.0])
    if hi - lo < 1e-9:
        hi, lo = hi + 1, lo - 1
    xs = [pad + (width - 2 * pad) * (i / (n - 1) if n > 1 else 0.5) for i in range(n)]
    ys = lambda v: pad + (height - 2 * pad) * (hi - v) / (hi - lo)
    dots = [(round(xs[i], 1), round(ys(v), 1), v) for i, v in enumerate(values) if v is not None]
    return {"points": " ".join(f"{x},{y}" for x, y, _ in dots), "dots": dots, "zero_y": round(ys(0.0), 1),
            "width": width, "height": height}


def history_view(store: Store, run_row: dict, limit: int) -> dict:
    """Last LIMIT runs (oldest first) with per-series outcomes, per-test statuses and bench series."""
    runs = list(reversed(store.runs(limit=limit)))
    runs = [run_row if r["id"] == run_row["id"] else r for r in runs]
    per_run = {r["id"]: {(s.kernel, s.name): s for s in store.load_series(r["id"])} for r in runs}
    keys: list[tuple[str, str]] = []
    for r in runs:
        for k in per_run[r["id"]]:
            if k not in keys:
                keys.append(k)
    rows = []
    for key in keys:
        tests: list[str] = []
        for r in runs:
            s = per_run[r["id"]].get(key)
            for t in (s.tests if s else []):
                if t["name"] not in tests:
                    tests.append(t["name"])
        outcome_cells = []
        for r in runs:
            s = per_run[r["id"]].get(key)
            outcome_cells.append(None if s is None else (s.verdict if s.outcome == "tested" else s.outcome))
        trows = []
        for name in sorted(tests):
            cells = []
            for r in runs:
                s = per_run[r["id"]].get(key)
                if s is None:
                    cells.append({"text": "", "cls": "none"})
                elif s.outcome != "tested":
                    cells.append({"text": "-", "cls": "none", "title": s.outcome})
                else:
                    t = next((t for t in s.tests if t["name"] == name), None)
                    cells.append({"text": t["status"] if t else "", "cls": (t["status"] + (" known" if t.get("known") else "")) if t else "none"})
            trows.append({"test": name, "cells": cells})
        metrics: list[str] = []
        for r in runs:
            s = per_run[r["id"]].get(key)
            for m in (s.bench if s else []):
                if m["name"] not in metrics:
                    metrics.append(m["name"])
        charts = []
        for m in metrics:
            vals, unit, meds = [], None, []
            for r in runs:
                s = per_run[r["id"]].get(key)
                hit = next((x for x in (s.bench if s else []) if x["name"] == m), None)
                vals.append(None if hit is None else hit.get("change_pct"))
                meds.append(None if hit is None else hit.get("patched_median"))
                unit = unit or (hit or {}).get("unit")
            last = next((v for v in reversed(vals) if v is not None), None)
            charts.append({"metric": m, "unit": unit, "values": vals, "medians": meds, "last": last,
                           "svg": sparkline(vals)})
        rows.append({"kernel": key[0], "series": key[1], "outcomes": outcome_cells, "tests": trows, "charts": charts})
    return {"runs": runs, "rows": rows}


def render_html(ctx: dict) -> str:
    import jinja2
    from .paths import TEMPLATES
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["change_text"] = _change_text
    env.filters["short"] = lambda s, n=12: (s or "")[:n]
    return env.get_template("nightly.html.j2").render(**ctx)


def write_reports(report_dir: Path, store: Store, cfg: NightlyConfig, run_row: dict, prev: dict | None,
                  kernels: list[dict], records: list[SeriesRecord], changes: list[dict],
                  kernel_errors: list[str]) -> str:
    """report.html, report.json, summary.txt and junit/<kernel>--<series>.xml in REPORT_DIR; returns the summary."""
    summary = text_summary(run_row, prev, kernels, records, changes, kernel_errors, report_dir)
    (report_dir / "summary.txt").write_text(summary)
    (report_dir / "report.json").write_text(json.dumps(report_json(run_row, prev, kernels, records, changes), indent=1) + "\n")
    jd = report_dir / "junit"
    jd.mkdir(exist_ok=True)
    for r in records:
        (jd / f"{_SAFE.sub('_', r.kernel)}--{_SAFE.sub('_', r.name)}.xml").write_text(junit_for(r))
    ordered = sorted(changes, key=lambda c: SEVERITY_ORDER.get(c["severity"], 9))
    html = render_html({"run": run_row, "prev": prev, "kernels": kernels, "series": records, "changes": ordered,
                        "summary": summary, "history": history_view(store, run_row, cfg.history),
                        "kernel_errors": kernel_errors, "series_line": series_line,
                        "counts": {s: sum(c["severity"] == s for c in changes) for s in SEVERITY_ORDER}})
    (report_dir / "report.html").write_text(html)
    return summary


# ================================================================ kproto history

def _table(head: list[str], rows: list[list[str]]) -> str:
    w = [max(len(str(x)) for x in col) for col in zip(head, *rows)] if rows else [len(h) for h in head]
    fmt = lambda r: "  ".join(str(x).ljust(w[i]) for i, x in enumerate(r)).rstrip()
    return "\n".join([fmt(head)] + [fmt(r) for r in rows]) + "\n"


def history_text(store: Store, series: str | None = None, test: str | None = None, limit: int = 10,
                 as_json: bool = False) -> str:
    runs = store.runs(limit=limit)
    if not runs:
        return "no nightly runs recorded yet\n"
    if test:
        rows = [r for r in store.test_history(test=test, series=series, limit=limit) if r["test"]]
        if as_json:
            return json.dumps(rows, indent=1) + "\n"
        if not rows:
            return f"no results for tests matching {test!r} in the last {limit} runs\n"
        ids = [r["id"] for r in reversed(runs)]
        cells: dict[tuple[str, str, str], dict[int, str]] = {}
        for r in rows:
            cells.setdefault((r["kernel"], r["series"], r["test"]), {})[r["run_id"]] = r["status"] + (" (known)" if r["known"] else "")
        # a series that did not get to its tests shows its outcome in the test's column
        outcome = {(r["run_id"], r["kernel"], r["series"]): r["outcome"]
                   for r in store.test_history(series=series, limit=limit)}
        state = {r["id"]: ("" if r["complete"] else "*") for r in runs}
        head = ["SERIES", "TEST"] + [f"#{i}{state[i]}" for i in ids]
        body = []
        for (kern, ser, name), per in sorted(cells.items()):
            body.append([ser, name] + [per.get(i) or (outcome.get((i, kern, ser)) or "") for i in ids])
        note = "\n(* incomplete run)\n" if any(state[i] for i in ids) else ""
        return _table(head, body) + note
    if series:
        rows = store.test_history(series=series, limit=limit)
        per: dict[tuple[int, str, str], dict] = {}
        for r in rows:
            d = per.setdefault((r["run_id"], r["kernel"], r["series"]), {**r, "counts": {}})
            if r["test"]:
                d["counts"][r["status"]] = d["counts"].get(r["status"], 0) + 1
        srows = {(r["run_id"], r["kernel"], r["name"]): r for rid in {k[0] for k in per}
                 for r in store.series_rows(rid)}
        out = []
        for key, d in sorted(per.items(), reverse=True):
            s = srows.get(key, {})
            out.append({"run": key[0], "started": d["started"], "complete": bool(d["complete"]), "kernel": key[1],
                        "series": key[2], "outcome": d["outcome"], "verdict": s.get("verdict"),
                        "tests": d["counts"], "error": s.get("error"),
                        "patches": [Path(p["path"]).name for p in s.get("patches", [])],
                        "series_hash": (s.get("series_hash") or "")[:12]})
        if as_json:
            return json.dumps(out, indent=1) + "\n"
        if not out:
            return f"no series matching {series!r} in the last {limit} runs\n"
        body = [[f"#{o['run']}" + ("" if o["complete"] else "*"), o["started"], o["series"], o["outcome"],
                 o["verdict"] or "", ", ".join(f"{n} {s}" for s, n in sorted(o["tests"].items())),
                 o["series_hash"], (o["error"] or "")[:70]] for o in out]
        return _table(["RUN", "STARTED", "SERIES", "OUTCOME", "VERDICT", "TESTS", "PATCHES", "ERROR"], body)
    out = []
    for r in runs:
        ss = store.series_rows(r["id"])
        ch = store.changes(r["id"])
        ks = store.kernels(r["id"])
        out.append({"run": r["id"], "started": r["started"], "finished": r["finished"], "state": r["state"],
                    "complete": bool(r["complete"]), "exit_code": r["exit_code"], "error": r["error"],
                    "previous_run": r["previous_run"],
                    "series": len(ss), "tested": sum(s["outcome"] == "tested" for s in ss),
                    "regressions": sum(c["severity"] == "regression" for c in ch),
                    "improvements": sum(c["severity"] == "improvement" for c in ch),
                    "kernels": [f"{k['name']}={k['version'] or 'error'}" for k in ks], "report_dir": r["report_dir"]})
    if as_json:
        return json.dumps(out, indent=1) + "\n"
    body = [[f"#{o['run']}", o["started"], _dur(o["started"], o["finished"]) if o["finished"] else "-", o["state"],
             "" if o["exit_code"] is None else str(o["exit_code"]), f"{o['tested']}/{o['series']}",
             str(o["regressions"]), str(o["improvements"]), " ".join(o["kernels"]),
             (o["error"] or "")[:60]] for o in out]
    return _table(["RUN", "STARTED", "TOOK", "STATE", "EXIT", "TESTED", "REGR", "IMPR", "KERNELS", "ERROR"], body)
