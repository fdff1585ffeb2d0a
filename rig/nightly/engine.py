"""The Dask cluster of one nightly run (engine()): connected to (or embedded) before any work starts,
with the run's stand-ins for kproto test / the baseline build registered; Engine.start submits the matrix
(rig/nightly/matrix.py), Engine.stop cancels what is left and, on an interrupt, stops the run's stage
processes on every worker."""
from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from rig.core.errors import KprotoError
from rig.nightly import children, cluster
from rig.nightly.config import NightlyConfig
from rig.nightly.matrix import Matrix
from rig.nightly.stages import LOCAL, prepare_kernel


class Engine:
    def __init__(self, sess: cluster.Session, ccfg: cluster.ClusterCfg, test_fn: Any, kernel_fn: Any, inproc: bool,
                 refs: dict[str, str | None]) -> None:
        self.sess, self.ccfg = sess, ccfg
        self.test_fn, self.kernel_fn = test_fn, kernel_fn
        self.inproc = inproc
        self.test_ref, self.kernel_ref = refs.get("test_fn"), refs.get("kernel_fn")
        self.bisect_ref = refs.get("bisect_fn")
        self.matrix: Matrix | None = None

    def start(self, cfg: NightlyConfig, report_dir: Path, say: Callable[[str], None]) -> Matrix:
        self.matrix = Matrix(self, cfg, report_dir, say)
        return self.matrix

    def stop(self, interrupted: bool) -> None:
        m = self.matrix
        if m is None:
            return
        client: Any = self.sess.client
        with contextlib.suppress(Exception):
            client.unsubscribe_topic(m.ctx["topic"])
        futs = list(m.live.values())
        if futs:
            with contextlib.suppress(Exception):
                client.cancel(futs)
        if interrupted:
            # running tasks are not interruptible in Dask: stop this run's stage processes on every worker
            with contextlib.suppress(Exception):
                client.run(children.cancel_children, m.ctx["token"], wait=True)
        prefix = f"objtree-{m.ctx['token']}-"
        with contextlib.suppress(Exception):
            client.run(cluster.drop_resources, prefix)


def _ref(fn: Any, what: str, registry: dict[str, object]) -> str | None:
    if fn is None:
        return None
    if isinstance(fn, str):
        if ":" not in fn:
            raise KprotoError(f"{what} {fn!r}: give it as 'module:function'")
        return fn
    token = f"local:{what}:{uuid.uuid4().hex}"
    registry[token] = fn
    return token


@contextlib.contextmanager
def engine(cfg: NightlyConfig, say: Callable[[str], None], scheduler: str | None = None, test_fn: Any = None,
           kernel_fn: Any = None, bisect_fn: Any = None) -> Iterator[Engine]:
    """Connect to (or embed) the Dask cluster before any work starts. TEST_FN / KERNEL_FN / BISECT_FN: None
    (kproto test / the real baseline build / kproto bisect), 'module:function' (importable by the workers),
    or a Python object (in-process stand-ins for tests: run in the thread of the embedded cluster, one at a
    time)."""
    if kernel_fn is prepare_kernel:
        kernel_fn = None
    inproc = any(f is not None and not isinstance(f, str) for f in (test_fn, kernel_fn, bisect_fn))
    refs: dict[str, str | None] = {}
    tokens: list[str] = []
    try:
        refs["test_fn"] = _ref(test_fn, "test_fn", LOCAL)
        refs["kernel_fn"] = _ref(kernel_fn, "kernel_fn", LOCAL)
        refs["bisect_fn"] = _ref(bisect_fn, "bisect_fn", LOCAL)
        tokens = [r for r in refs.values() if r and r.startswith("local:")]
        ok = False
        eng = None
        try:
            with cluster.session(cfg.cluster, scheduler=scheduler, inproc=inproc) as sess:
                eng = Engine(sess, cfg.cluster, test_fn, kernel_fn, inproc, refs)
                try:
                    yield eng
                    ok = True
                finally:
                    eng.stop(interrupted=not ok)
        finally:
            if not ok and eng is not None and eng.sess.embedded and eng.matrix is not None:
                # the embedded worker is gone, so nothing new starts: stop what its threads had started
                children.cancel_children(eng.matrix.ctx["token"])
    finally:
        for t in tokens:
            LOCAL.pop(t, None)
