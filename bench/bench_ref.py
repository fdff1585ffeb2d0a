#!/usr/bin/env python3
"""Benchmark the reference overlay (overlay_ref, FUSE) against the host kernel's overlayfs on
the same lower layers and against a plain pyfuse3 passthrough filesystem (bench/passthrough_fs.py,
the cost of FUSE + pyfuse3 alone), and print one table with the ratios reference/passthrough and
reference/kernel.  Not a timed test (it prints figures, asserts nothing); needs root.

    .venv/bin/python bench/bench_ref.py [--size-mb 512] [--files 10000] [--dir-entries 10000]
                                        [--tmp DIR] [--only all|reads|meta|multi]
                                        [--ref-before PKGDIR] [--ml-layers 3] [--ml-files 3000]

``--ref-before PKGDIR`` adds a fourth column, "before": the reference from another copy of the
package (PKGDIR holds an ``overlay_ref/`` directory, e.g. a copy of the tree before a change), so
a change is measured side by side with what it replaces in the same run.

The passthrough mirrors a plain directory holding a hard link to the big lower file (one inode,
so the page-cache drops below reach it too) and an unmerged directory with as many entries as the
merged one.  For the issue's setting (tmpfs layers) give --tmp a tmpfs; note that on tmpfs
"uncached" drops only the FUSE/overlay page cache (the backing data stays in memory).

Metrics (higher is better):
  seq read cached     MB/s, a file read a second time through the page cache (1 MiB reads)
  seq read uncached   MB/s, after POSIX_FADV_DONTNEED on the overlay file and the lower file
  rand read 4k        IOPS, 4 KiB preads at random offsets, uncached (fadvise) start, RANDOM hint
  create+stat+unlink  files/s, for N new files in a fresh directory (3 syscalls per file)
  readdir merged      entries/s, first listing (+lstat of every entry) of a merged directory
                      whose entries come half from each of two lower layers

Multi-lower metrics ("ml", ``--ml-layers`` lower layers, default 3, and a tree of ``--ml-files``
files): every directory of the tree exists in every lower layer (a merged directory of all of
them), each file lives in one layer, every 10th name is also in the layer below it (shadowed) and
every 20th name of the bottom layer is whited out in the top one.  The passthrough mirrors the
merged view as one plain tree.  Each metric runs on a fresh mount with an empty upper layer:
  ml mount+umount     cycles/s, mount and unmount through the Python API (overlay_ref.mount/umount)
  ml remount mount(8) cycles/s, what unionmount-testsuite does between steps: umount(8), drop the
                      caches, mount(8) (-t fuse.kproto-ovl through /sbin/mount.fuse.kproto-ovl for
                      the reference, running the column's package; the first mount(8) starts the
                      helper's template process, overlay_ref/zygote.py, when the package has one),
                      one stat
  ml stat cold        lookups/s, lstat of every file by path, in random order, nothing listed
  ml stat absent      lookups/s, lstat of names that no layer has (each walks every layer)
  ml walk cold        entries/s, os.walk of the tree with an lstat of every entry
  ml copy-up mix      ops/s, on 1/10 of the files: append (copy-up), chmod, rename, unlink
                      (whiteout), and a mkdir + a file created in each merged directory
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import overlay_ref  # noqa: E402
from overlay_ref import zygote  # noqa: E402

MiB = 1 << 20


def _fadvise_dontneed(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def seq_read(path: Path) -> float:
    buf = bytearray(MiB)
    total = 0
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            total += n
    return total / MiB / (time.perf_counter() - t)


def rand_read(path: Path, count: int, seed: int = 1) -> float:
    rng = random.Random(seed)
    size = os.path.getsize(path)
    offs = [rng.randrange(0, size // 4096) * 4096 for _ in range(count)]
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        t = time.perf_counter()
        for o in offs:
            os.pread(fd, 4096, o)
        return count / (time.perf_counter() - t)
    finally:
        os.close(fd)


def create_stat_unlink(d: Path, n: int) -> float:
    d.mkdir()
    names = [os.path.join(d, f"f{i:06d}") for i in range(n)]
    t = time.perf_counter()
    for p in names:
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))
    for p in names:
        os.stat(p)
    for p in names:
        os.unlink(p)
    el = time.perf_counter() - t
    os.rmdir(d)
    return n / el


def readdir(d: Path) -> float:
    t = time.perf_counter()
    n = 0
    with os.scandir(d) as it:
        for e in it:
            e.stat(follow_symlinks=False)
            n += 1
    return n / (time.perf_counter() - t)


def build_layers(base: Path, size_mb: int, dir_entries: int) -> tuple[Path, Path]:
    l0, l1 = base / "lower0", base / "lower1"
    (l0 / "merged").mkdir(parents=True)
    (l1 / "merged").mkdir(parents=True)
    chunk = os.urandom(MiB)
    with open(l1 / "big", "wb") as f:
        for _ in range(size_mb):
            f.write(chunk)
    half = dir_entries // 2
    for i in range(dir_entries):
        ((l0 if i < half else l1) / "merged" / f"e{i:06d}").write_bytes(b"x")
    os.sync()
    return l0, l1


PASSTHROUGH = Path(__file__).resolve().with_name("passthrough_fs.py")


def build_passthrough_source(src: Path, big: Path, dir_entries: int) -> None:
    (src / "merged").mkdir(parents=True)
    os.link(big, src / "big")
    for i in range(dir_entries):
        (src / "merged" / f"e{i:06d}").write_bytes(b"x")
    os.sync()


def _set_read_ahead_kb(mnt: Path, kb: int) -> None:
    dev = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(mnt):
                dev = fields[2]
    if dev is None:
        raise RuntimeError(f"{mnt} not in /proc/self/mountinfo")
    Path(f"/sys/class/bdi/{dev}/read_ahead_kb").write_text(f"{kb}\n")


class Target:
    """One mounted filesystem of a column: "kernel" (overlayfs), "passthrough", "ref" (this
    tree's overlay_ref) or "before" (overlay_ref from ``--ref-before``)."""

    def __init__(self, kind: str, base: Path, lowers: list[Path], source: Path | None = None,
                 pkg: Path | None = None):
        self.kind, self.lowers = kind, lowers
        self.dir = base / kind
        self.upper, self.work, self.mnt = self.dir / "upper", self.dir / "work", self.dir / "mnt"
        self.source = source if source is not None else base / "passthrough-src"
        self.pkg = pkg                         # "before": the directory holding its overlay_ref
        self.proc: subprocess.Popen | None = None
        self.read_ahead_kb: int | None = None     # passthrough: None = the kernel's default

    def _package(self):
        """The overlay_ref package this target mounts with ("before": the one in self.pkg,
        imported under another name; its daemon runs that package's code)."""
        if self.kind != "before":
            return overlay_ref
        mod = sys.modules.get("overlay_ref_before")
        if mod is None:
            assert self.pkg is not None
            init = self.pkg / "overlay_ref" / "__init__.py"
            spec = importlib.util.spec_from_file_location(
                "overlay_ref_before", init, submodule_search_locations=[str(init.parent)])
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            sys.modules["overlay_ref_before"] = mod
            spec.loader.exec_module(mod)
        return mod

    def mount(self) -> None:
        for p in (self.upper, self.work, self.mnt):
            if p.exists():
                shutil.rmtree(p)
            p.mkdir(parents=True)
        if self.kind == "passthrough":
            self.proc = subprocess.Popen([sys.executable, str(PASSTHROUGH), str(self.source),
                                          str(self.mnt)])
            deadline = time.monotonic() + 20
            while not os.path.ismount(self.mnt):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.proc.kill()
                    raise RuntimeError(f"passthrough mount of {self.mnt} failed")
                time.sleep(0.002)
            if self.read_ahead_kb is not None:
                os.listdir(self.mnt)          # FUSE INIT answered (it would cap the value)
                _set_read_ahead_kb(self.mnt, self.read_ahead_kb)
        elif self.kind == "kernel":
            opts = (f"lowerdir={':'.join(map(str, self.lowers))},upperdir={self.upper},"
                    f"workdir={self.work}")
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(self.mnt)],
                           check=True)
        else:
            self._package().mount([str(p) for p in self.lowers], str(self.upper),
                                  str(self.work), str(self.mnt))

    def mount8(self) -> None:
        """Mount as the outside suites do: mount(8) for the kernel and the reference (its helper runs
        this column's package: PYTHONPATH names it), the passthrough as usual."""
        if self.kind not in ("ref", "before"):
            self.mount()
            return
        for p in (self.upper, self.work, self.mnt):
            if p.exists():
                shutil.rmtree(p)
            p.mkdir(parents=True)
        pkg_parent = self.pkg if self.kind == "before" else Path(overlay_ref.__file__).resolve().parents[1]
        opts = (f"lowerdir={':'.join(map(str, self.lowers))},upperdir={self.upper},"
                f"workdir={self.work}")
        subprocess.run(["mount", "-t", "fuse.kproto-ovl", "kproto-ovl", str(self.mnt), "-o", opts],
                       check=True, env={**os.environ, "KPROTO_OVL_PYTHON": sys.executable,
                                        "PYTHONPATH": str(pkg_parent)})

    def umount8(self) -> None:
        if self.kind in ("ref", "before"):
            subprocess.run(["umount", str(self.mnt)], check=True)
        else:
            self.umount()

    def umount(self) -> None:
        if self.kind == "passthrough":
            assert self.proc is not None
            subprocess.run(["fusermount3", "-u", str(self.mnt)], check=True)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        elif self.kind == "kernel":
            subprocess.run(["umount", str(self.mnt)], check=True)
        else:
            self._package().umount(str(self.mnt))


# ---------------------------------------------------------------- multi-lower benchmark

def ml_tree(layers: int, files: int) -> tuple[list[str], dict[int, list[str]], list[str],
                                               list[str]]:
    """The multi-lower tree: (directories, {layer: files}, whiteouts in layer 0, visible files).
    Layer 0 is the top lower layer (overlayfs lowerdir order)."""
    dirs = [f"t{i}" for i in range(10)] + [f"t{i}/s{j}" for i in range(10) for j in range(5)]
    leaves = dirs[10:]
    per: dict[int, list[str]] = {i: [] for i in range(layers)}
    whiteouts: list[str] = []
    visible: list[str] = []
    for k in range(files):
        name = f"{leaves[k % len(leaves)]}/f{k:05d}"
        layer = k % layers
        per[layer].append(name)
        if k % 10 == 0 and layer + 1 < layers:
            per[layer + 1].append(name)          # shadowed copy in the layer below
        if k % 20 == 1 and layer == layers - 1 and layers > 1:
            whiteouts.append(name)               # hidden by a whiteout in the top layer
            continue
        visible.append(name)
    return dirs, per, whiteouts, visible


def build_ml_layers(base: Path, layers: int, files: int) -> tuple[list[Path], Path, list[str]]:
    """Build the lower layers and the passthrough's merged tree; returns (lowers, merged
    source, visible files)."""
    dirs, per, whiteouts, visible = ml_tree(layers, files)
    lowers = [base / f"ml-lower{i}" for i in range(layers)]
    src = base / "ml-merged"
    for root in lowers + [src]:
        for d in dirs:
            (root / d).mkdir(parents=True, exist_ok=True)
    for i, names in per.items():
        for n in names:
            (lowers[i] / n).write_bytes(b"layer %d %s\n" % (i, n.encode()))
    for n in whiteouts:
        os.mknod(lowers[0] / n, stat.S_IFCHR | 0o000, os.makedev(0, 0))
    for n in visible:
        (src / n).write_bytes(b"x" * 16)
    os.sync()
    return lowers, src, visible


def ml_mount_cycle(t: Target, count: int) -> float:
    t0 = time.perf_counter()
    for _ in range(count):
        t.mount()
        os.stat(t.mnt)
        t.umount()
    return count / (time.perf_counter() - t0)


def _num(v: float) -> str:
    """A table figure: grouped integers, one decimal below 100 (mount cycles/s are single digits)."""
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def ml_remount8(t: Target, count: int) -> float:
    """unionmount-testsuite's remount between steps, COUNT times: umount(8), drop_caches, mount(8), stat."""
    t.mount8()
    t0 = time.perf_counter()
    for _ in range(count):
        t.umount8()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        t.mount8()
        os.stat(t.mnt)
    rate = count / (time.perf_counter() - t0)
    t.umount()            # the API's umount also waits for the daemon of the last mount to exit
    if t.kind == "ref":
        zygote.stop()     # the helper's template process (started by the first mount(8)) goes too
    return rate


def ml_stat(mnt: Path, names: list[str]) -> float:
    paths = [os.path.join(mnt, n) for n in names]
    t0 = time.perf_counter()
    for p in paths:
        os.lstat(p)
    return len(paths) / (time.perf_counter() - t0)


def ml_stat_absent(mnt: Path, names: list[str]) -> float:
    paths = [os.path.join(mnt, n + ".absent") for n in names]
    t0 = time.perf_counter()
    for p in paths:
        try:
            os.lstat(p)
        except FileNotFoundError:
            pass
        else:
            raise AssertionError(f"{p} exists")
    return len(paths) / (time.perf_counter() - t0)


def ml_walk(mnt: Path) -> float:
    n = 0
    t0 = time.perf_counter()
    stack = [str(mnt)]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                e.stat(follow_symlinks=False)
                n += 1
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
    return n / (time.perf_counter() - t0)


def ml_mix(mnt: Path, names: list[str], dirs: list[str]) -> float:
    ops = 0
    t0 = time.perf_counter()
    for i, n in enumerate(names):
        p = os.path.join(mnt, n)
        k = i % 4
        if k == 0:
            fd = os.open(p, os.O_WRONLY | os.O_APPEND)
            os.write(fd, b"+")
            os.close(fd)
        elif k == 1:
            os.chmod(p, 0o600)
        elif k == 2:
            os.rename(p, p + ".moved")
            os.lstat(p + ".moved")
            ops += 1
        else:
            os.unlink(p)
        ops += 1
    for d in dirs:
        nd = os.path.join(mnt, d, "newdir")
        os.mkdir(nd)
        fd = os.open(os.path.join(nd, "newfile"), os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
        os.write(fd, b"new")
        os.close(fd)
        ops += 2
    return ops / (time.perf_counter() - t0)


def measure_ml(targets: list[Target], args, visible: list[str],
               samples: dict[str, dict[str, list[float]]]) -> None:
    dirs, _, _, _ = ml_tree(args.ml_layers, args.ml_files)
    rng = random.Random(7)
    shuffled = visible[:]
    rng.shuffle(shuffled)
    absent = shuffled[: max(1, len(shuffled) // 3)]
    mix = sorted(shuffled[: max(4, len(shuffled) // 10)])

    def add(t, name, v):
        samples[t.kind].setdefault(name, []).append(v)

    src = targets[1].source
    pristine = src.with_name(src.name + "-pristine")
    shutil.copytree(src, pristine, symlinks=True)
    for _ in range(args.runs):
        for t in targets:
            add(t, "ml mount+umount (cycles/s)", ml_mount_cycle(t, 3))
        if os.path.exists("/sbin/mount.fuse.kproto-ovl"):
            for t in targets:
                add(t, "ml remount mount(8) (cycles/s)", ml_remount8(t, 5))
        for t in targets:
            t.mount()
            try:
                add(t, "ml stat cold (lookups/s)", ml_stat(t.mnt, shuffled))
                add(t, "ml stat absent (lookups/s)", ml_stat_absent(t.mnt, absent))
            finally:
                t.umount()
        for t in targets:
            t.mount()
            try:
                add(t, "ml walk cold (entries/s)", ml_walk(t.mnt))
            finally:
                t.umount()
        for t in targets:
            t.mount()
            try:
                add(t, "ml copy-up mix (ops/s)", ml_mix(t.mnt, mix, dirs))
            finally:
                t.umount()
            if t.kind == "passthrough":           # it changed the tree it mirrors: restore it
                shutil.rmtree(t.source)
                shutil.copytree(pristine, t.source, symlinks=True)


def measure(targets: list[Target], args, samples: dict[str, dict[str, list[float]]]) -> None:
    """Run the read and metadata metrics (as ``--only`` says) on all targets, interleaved run
    by run (the machine is shared and noisy: interleaving exposes every target to the same
    load)."""
    def add(t, name, v):
        samples[t.kind].setdefault(name, []).append(v)

    reads = args.only in ("all", "reads")
    meta = args.only in ("all", "meta")
    mounted: list[Target] = []
    try:
        for t in targets:
            t.mount()
            mounted.append(t)
        big_lower = targets[0].lowers[1] / "big"
        for _ in range(args.runs if reads else 0):
            for t in targets:
                big = t.mnt / "big"
                _fadvise_dontneed(big)
                _fadvise_dontneed(big_lower)
                add(t, "seq read uncached (MB/s)", seq_read(big))
        if reads:
            for t in targets:
                seq_read(t.mnt / "big")                      # warm the page caches
        for _ in range(args.runs if reads else 0):
            for t in targets:
                add(t, "seq read cached (MB/s)", seq_read(t.mnt / "big"))
        for i in range(args.runs if reads else 0):
            for t in targets:
                big = t.mnt / "big"
                _fadvise_dontneed(big)
                _fadvise_dontneed(big_lower)
                add(t, "rand read 4k uncached (IOPS)", rand_read(big, args.rand_reads, seed=i))
        if reads:
            for t in targets:
                seq_read(t.mnt / "big")
        for i in range(args.runs if reads else 0):
            for t in targets:
                add(t, "rand read 4k cached (IOPS)", rand_read(t.mnt / "big", args.rand_reads * 5,
                                                             seed=100 + i))
        for i in range(args.runs if meta else 0):
            for t in targets:
                add(t, "create+stat+unlink (files/s)", create_stat_unlink(t.mnt / f"meta{i}",
                                                                           args.files))
    finally:
        for t in mounted:
            t.umount()
    for _ in range(args.runs if meta else 0):
        for t in targets:
            t.mount()                                     # a fresh mount: cold directory
            try:
                add(t, "readdir merged, cold (entries/s)", readdir(t.mnt / "merged"))
                add(t, "readdir merged, warm (entries/s)", readdir(t.mnt / "merged"))
            finally:
                t.umount()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=512)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--dir-entries", type=int, default=10000)
    ap.add_argument("--rand-reads", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", choices=("all", "reads", "meta", "multi"), default="all",
                    help="which metrics: reads, metadata (create+stat+unlink, readdir), the "
                         "multi-lower set, or all (default)")
    ap.add_argument("--ml-layers", type=int, default=3, help="lower layers of the multi-lower set")
    ap.add_argument("--ml-files", type=int, default=3000, help="files of the multi-lower tree")
    ap.add_argument("--ref-before", metavar="PKGDIR", default=None,
                    help="also measure the overlay_ref package in PKGDIR/overlay_ref (column "
                         "'before')")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--passthrough-read-ahead-kb", type=int, default=None, metavar="KB",
                    help="readahead of the passthrough mount (default: the kernel's, 128 KiB; "
                         "the reference sets 1024 unless its -o read_ahead_kb says otherwise)")
    ap.add_argument("--tmp", default=None, help="where to build the layers (default: $TMPDIR)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_ref: needs root (kernel overlay mounts)", file=sys.stderr)
        return 2
    before = Path(args.ref_before).resolve() if args.ref_before else None
    if before is not None and not (before / "overlay_ref" / "__init__.py").is_file():
        print(f"bench_ref: no overlay_ref package in {before}", file=sys.stderr)
        return 2
    kinds = ["kernel", "passthrough", "ref"] + (["before"] if before is not None else [])
    samples: dict[str, dict[str, list[float]]] = {k: {} for k in kinds}
    base = Path(tempfile.mkdtemp(prefix="kproto-bench-ref-", dir=args.tmp))
    try:
        if args.only != "multi":
            size_mb = args.size_mb if args.only in ("all", "reads") else 1
            lowers = build_layers(base, size_mb, args.dir_entries)
            build_passthrough_source(base / "passthrough-src", lowers[1] / "big",
                                     args.dir_entries)
            targets = [Target(k, base, list(lowers), pkg=before) for k in kinds]
            targets[1].read_ahead_kb = args.passthrough_read_ahead_kb
            measure(targets, args, samples)
        if args.only in ("all", "multi"):
            ml_lowers, ml_src, visible = build_ml_layers(base, args.ml_layers, args.ml_files)
            ml_targets = [Target(k, base / "ml", ml_lowers, source=ml_src, pkg=before)
                          for k in kinds]
            measure_ml(ml_targets, args, visible, samples)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    results = {k: {n: statistics.median(v) for n, v in d.items()} for k, d in samples.items()}
    names = list(results["kernel"])
    w = max(len(n) for n in names)
    what = []
    if args.only in ("all", "reads"):
        what.append(f"{args.size_mb} MiB file")
    if args.only in ("all", "meta"):
        what.append(f"{args.files} files, {args.dir_entries}-entry merged dir")
    if args.only in ("all", "multi"):
        what.append(f"multi-lower: {args.ml_layers} lower layers, {args.ml_files} files")
    print(f"\nreference overlay (FUSE) vs plain pyfuse3 passthrough (FUSE) vs host kernel "
          f"overlayfs {os.uname().release}; {', '.join(what)}; median of {args.runs}; "
          f"passthrough readahead: "
          + (f"{pra} KiB" if (pra := args.passthrough_read_ahead_kb) is not None
             else "the kernel's default")
          + (f"; before = {before}/overlay_ref" if before is not None else ""))
    extra = f"  {'before':>10}  {'ref/before':>10}" if before is not None else ""
    print(f"{'metric':<{w}}  {'kernel':>10}  {'passthrough':>11}  {'reference':>10}  "
          f"{'ref/pass':>8}  {'ref/kernel':>10}" + extra)
    rows: list[dict[str, Any]] = []
    for n in names:
        k, p, r = results["kernel"][n], results["passthrough"][n], results["ref"][n]
        rp = r / p if p else float("nan")
        rk = r / k if k else float("nan")
        row = {"name": n, "kernel": k, "passthrough": p, "reference": r,
               "ref/passthrough": rp, "ref/kernel": rk,
               "samples": {kind: samples[kind][n] for kind in kinds}}
        line = f"{n:<{w}}  {_num(k):>10}  {_num(p):>11}  {_num(r):>10}  {rp:>7.2f}x  {rk:>9.2f}x"
        if before is not None:
            b = results["before"][n]
            row["before"] = b
            row["ref/before"] = r / b if b else float("nan")
            line += f"  {_num(b):>10}  {row['ref/before']:>9.2f}x"
        rows.append(row)
        print(line)

    print()
    for label, prefix in (("uncached sequential read", "seq read uncached"),
                          ("cached sequential read", "seq read cached"),
                          ("metadata (create+stat+unlink)", "create+stat+unlink"),
                          ("cold readdir", "readdir merged, cold"),
                          ("multi-lower stat, cold", "ml stat cold"),
                          ("multi-lower walk, cold", "ml walk cold"),
                          ("multi-lower copy-up mix", "ml copy-up mix")):
        found = next((x for x in rows if str(x["name"]).startswith(prefix)), None)
        if found is None:
            continue
        print(f"{label + ':':<31}reference/passthrough {found['ref/passthrough']:.2f}x, "
              f"reference/kernel {found['ref/kernel']:.2f}x"
              + (f", reference/before {found['ref/before']:.2f}x" if before is not None else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"metrics": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
