"""Preparing a kernel is one stage: a KernelSpec (which source, which config fragments) plus a patch series
becomes a source tree, the series, and built kernels (baseline and/or patched, each cached by base + patch
hashes + config, the patched one built incrementally in the baseline's object tree).

Every command that needs kernels (test, build, shell, bench, fuzz, nightly) goes through here instead of
spelling out expand -> open_source -> build itself."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from rig.kernel import build as buildmod
from rig.kernel import patches as patchmod
from rig.kernel import tree as treemod
from rig.kernel.build import Kernel
from rig.kernel.patches import Patch
from rig.kernel.tree import SourceTree

Progress = Callable[[str], None]


@dataclass(frozen=True)
class KernelSpec:
    """Which kernel: a source (tarball, tree, or None = the default source) and config fragments."""
    source: str | None = None
    fragments: tuple[Path, ...] = ()


@dataclass
class Prepared:
    tree: SourceTree
    series: list[Patch]
    baseline: Kernel | None
    patched: Kernel


def open_series(patches: Sequence[Path]) -> list[Patch]:
    """The patch files (directories expanded in order); BadInput naming the first unreadable one."""
    return patchmod.expand(list(patches))


def open_tree(spec: KernelSpec) -> SourceTree:
    return treemod.open_source(spec.source)


def baseline(spec: KernelSpec, progress: Progress, tree: SourceTree | None = None) -> tuple[SourceTree, Kernel]:
    """The unpatched kernel of SPEC (built once per source + config, then cached); TREE if already open."""
    tree = tree or open_tree(spec)
    return tree, buildmod.build(tree, [], tuple(spec.fragments), progress=progress)


def patched(spec: KernelSpec, series: list[Patch], progress: Progress,
            tree: SourceTree | None = None) -> tuple[SourceTree, Kernel]:
    """SPEC with SERIES applied (the tree is restored afterwards, whatever happens); TREE if already open.
    A patch that does not apply is PatchError (exit 2) from the build's own apply; callers that want it
    before a long baseline build check first (testrun, bisect)."""
    tree = tree or open_tree(spec)
    return tree, buildmod.build(tree, series, tuple(spec.fragments), progress=progress)


def prepare(spec: KernelSpec, patches: Sequence[Path], progress: Progress, with_baseline: bool = True) -> Prepared:
    """Series, tree, and the kernels: the baseline first (the patched build reuses its object tree)."""
    series = open_series(patches)
    tree = open_tree(spec)
    base = baseline(spec, progress, tree)[1] if with_baseline else None
    return Prepared(tree=tree, series=series, baseline=base, patched=patched(spec, series, progress, tree)[1])
