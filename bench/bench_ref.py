#!/usr/bin/env python3
"""Benchmark the reference overlay (overlay_ref, FUSE) against the host kernel's overlayfs on
the same lower layers and against a plain pyfuse3 passthrough filesystem (bench/passthrough_fs.py,
the cost of FUSE + pyfuse3 alone), and print one table with the ratios reference/passthrough and
reference/kernel.  Not a timed test (it prints figures, asserts nothing); needs root.

    .venv/bin/python bench/bench_ref.py [--size-mb 512] [--files 10000] [--dir-entries 10000]
                                        [--tmp DIR]

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
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import overlay_ref  # noqa: E402

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
    def __init__(self, kind: str, base: Path, lowers: list[Path]):
        self.kind, self.lowers = kind, lowers
        self.dir = base / kind
        self.upper, self.work, self.mnt = self.dir / "upper", self.dir / "work", self.dir / "mnt"
        self.source = base / "passthrough-src"
        self.proc: subprocess.Popen | None = None
        self.read_ahead_kb: int | None = None     # passthrough: None = the kernel's default

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
                time.sleep(0.02)
            if self.read_ahead_kb is not None:
                os.listdir(self.mnt)          # FUSE INIT answered (it would cap the value)
                _set_read_ahead_kb(self.mnt, self.read_ahead_kb)
        elif self.kind == "kernel":
            opts = (f"lowerdir={':'.join(map(str, self.lowers))},upperdir={self.upper},"
                    f"workdir={self.work}")
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(self.mnt)],
                           check=True)
        else:
            overlay_ref.mount([str(p) for p in self.lowers], str(self.upper), str(self.work),
                              str(self.mnt))

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
            overlay_ref.umount(str(self.mnt))


def measure(targets: list[Target], args) -> dict[str, dict[str, float]]:
    """Run every metric on all targets, interleaved run by run (the machine is shared and
    noisy: interleaving exposes both targets to the same load), and keep the medians."""
    samples: dict[str, dict[str, list[float]]] = {t.kind: {} for t in targets}

    def add(t, name, v):
        samples[t.kind].setdefault(name, []).append(v)

    mounted: list[Target] = []
    try:
        for t in targets:
            t.mount()
            mounted.append(t)
        big_lower = targets[0].lowers[1] / "big"
        for _ in range(args.runs):
            for t in targets:
                big = t.mnt / "big"
                _fadvise_dontneed(big)
                _fadvise_dontneed(big_lower)
                add(t, "seq read uncached (MB/s)", seq_read(big))
        for t in targets:
            seq_read(t.mnt / "big")                      # warm both page caches
        for _ in range(args.runs):
            for t in targets:
                add(t, "seq read cached (MB/s)", seq_read(t.mnt / "big"))
        for i in range(args.runs):
            for t in targets:
                big = t.mnt / "big"
                _fadvise_dontneed(big)
                _fadvise_dontneed(big_lower)
                add(t, "rand read 4k uncached (IOPS)", rand_read(big, args.rand_reads, seed=i))
        for t in targets:
            seq_read(t.mnt / "big")
        for i in range(args.runs):
            for t in targets:
                add(t, "rand read 4k cached (IOPS)", rand_read(t.mnt / "big", args.rand_reads * 5,
                                                             seed=100 + i))
        for i in range(args.runs):
            for t in targets:
                add(t, "create+stat+unlink (files/s)", create_stat_unlink(t.mnt / f"meta{i}",
                                                                           args.files))
    finally:
        for t in mounted:
            t.umount()
    for _ in range(args.runs):
        for t in targets:
            t.mount()                                     # a fresh mount: cold directory
            try:
                add(t, "readdir merged, cold (entries/s)", readdir(t.mnt / "merged"))
                add(t, "readdir merged, warm (entries/s)", readdir(t.mnt / "merged"))
            finally:
                t.umount()
    return {k: {n: statistics.median(v) for n, v in d.items()} for k, d in samples.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=512)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--dir-entries", type=int, default=10000)
    ap.add_argument("--rand-reads", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--passthrough-read-ahead-kb", type=int, default=None, metavar="KB",
                    help="readahead of the passthrough mount (default: the kernel's, 128 KiB; "
                         "the reference sets 1024 unless its -o read_ahead_kb says otherwise)")
    ap.add_argument("--tmp", default=None, help="where to build the layers (default: $TMPDIR)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_ref: needs root (kernel overlay mounts)", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="kproto-bench-ref-", dir=args.tmp))
    try:
        lowers = build_layers(base, args.size_mb, args.dir_entries)
        build_passthrough_source(base / "passthrough-src", lowers[1] / "big", args.dir_entries)
        targets = [Target(k, base, list(lowers)) for k in ("kernel", "passthrough", "ref")]
        targets[1].read_ahead_kb = args.passthrough_read_ahead_kb
        results = measure(targets, args)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    names = list(results["kernel"])
    w = max(len(n) for n in names)
    print(f"\nreference overlay (FUSE) vs plain pyfuse3 passthrough (FUSE) vs host kernel "
          f"overlayfs {os.uname().release}; {args.size_mb} MiB file, {args.files} files, "
          f"{args.dir_entries}-entry merged dir, median of {args.runs}; passthrough readahead: "
          + (f"{pra} KiB" if (pra := args.passthrough_read_ahead_kb) is not None
             else "the kernel's default"))
    print(f"{'metric':<{w}}  {'kernel':>10}  {'passthrough':>11}  {'reference':>10}  "
          f"{'ref/pass':>8}  {'ref/kernel':>10}")
    rows: list[dict[str, Any]] = []
    for n in names:
        k, p, r = results["kernel"][n], results["passthrough"][n], results["ref"][n]
        rp = r / p if p else float("nan")
        rk = r / k if k else float("nan")
        rows.append({"name": n, "kernel": k, "passthrough": p, "reference": r,
                     "ref/passthrough": rp, "ref/kernel": rk})
        print(f"{n:<{w}}  {k:>10,.0f}  {p:>11,.0f}  {r:>10,.0f}  {rp:>7.2f}x  {rk:>9.2f}x")

    def ratio(prefix: str, key: str) -> float:
        return next(float(x[key]) for x in rows if str(x["name"]).startswith(prefix))
    print()
    for label, prefix in (("uncached sequential read", "seq read uncached"),
                          ("cached sequential read", "seq read cached"),
                          ("metadata (create+stat+unlink)", "create+stat+unlink")):
        print(f"{label + ':':<31}reference/passthrough {ratio(prefix, 'ref/passthrough'):.2f}x, "
              f"reference/kernel {ratio(prefix, 'ref/kernel'):.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"metrics": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
