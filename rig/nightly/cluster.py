"""Dask plumbing for `kproto nightly`: the embedded LocalCluster (one machine, the default) or a real Dask
scheduler with workers on many machines (Session, session()); the optional [cluster] table of the nightly
config (ClusterCfg); worker resources; who ran what; progress events. The child process each nightly stage
runs in, which never outlives its worker, is rig/nightly/children.py.

No scheduling, queueing or worker protocol of kproto's own lives here: placement is Dask's (resources,
data locality, work stealing), and so are retries on lost workers. See docs/cluster.md.

Resources (Dask worker resources, `dask worker --resources "kvm=1 cpus=8"`):
  cpus     cores a task may use. A worker that does not declare it gets its core count (the worker plugin of
           rig/nightly/cluster_worker.py). Builds ask for `build_cpus`, tests for `test_cpus`.
  kvm      declared by the operator on workers whose QEMU can use KVM; KVM-only cells ask for kvm=1.
  objtree-<run>-<id>
           declared at run time by the worker that built a baseline: its object tree, which the patched
           builds of that baseline need (one at a time). Dask recomputes the baseline elsewhere, which
           declares it there, if that worker dies.

The worker side (the plugin that declares `cpus`, also usable as `dask worker --preload rig.nightly.cluster_worker`)
is rig/nightly/cluster_worker.py, so that reading a nightly config does not import Dask.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from rig.core.errors import BadInput, InfraError

RES_CPUS = "cpus"
RES_KVM = "kvm"
GUEST_CPUS = 2                     # vm.VM.smp: the vCPUs of one guest
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_WAIT_WORKERS_S = 60.0
DEFAULT_NO_WORKER_S = 300.0
_CLUSTER_KEYS = {"scheduler", "artifacts", "build_cpus", "test_cpus", "connect_timeout", "wait_workers_s",
                 "no_worker_timeout_s"}


class SchedulerUnreachable(InfraError):
    """The configured Dask scheduler does not answer (exit 3, before any work starts)."""


# ================================================================ [cluster] in the nightly config

@dataclass
class ClusterCfg:
    scheduler: str | None = None          # tcp://HOST:8786; None: the embedded LocalCluster
    artifacts: Path | None = None         # a directory every worker can read and write (NFS...): kernel blobs
    build_cpus: int | None = None         # cpus a build asks for (default: the whole embedded worker; 2 on a cluster)
    test_cpus: int | None = None          # cpus a test / bench / fuzz asks for (default: 2, a guest's vCPUs)
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    wait_workers_s: float = DEFAULT_WAIT_WORKERS_S
    no_worker_timeout_s: float = DEFAULT_NO_WORKER_S   # a cell no live worker can run fails after this long


def parse_cluster(raw, where: str, rel: Callable[[str], Path]) -> ClusterCfg:
    """The optional `[cluster]` table. Where the matrix runs never changes what it computes, so the table is
    left out of the config digest (rig/nightly/config.py)."""
    if raw is None:
        return ClusterCfg()
    w = f"{where}: [cluster]"
    if not isinstance(raw, dict):
        raise BadInput(f"{w} must be a table")
    unknown = set(raw) - _CLUSTER_KEYS
    if unknown:
        raise BadInput(f"{w}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(_CLUSTER_KEYS))})")
    out = ClusterCfg()
    sched = raw.get("scheduler")
    if sched is not None:
        if not isinstance(sched, str) or not sched.strip():
            raise BadInput(f"{w}: `scheduler` must be an address like tcp://HOST:8786")
        out.scheduler = sched.strip()
    art = raw.get("artifacts")
    if art is not None:
        if not isinstance(art, str) or not art:
            raise BadInput(f"{w}: `artifacts` must be a directory path shared by the workers")
        out.artifacts = rel(art)
    for key in ("build_cpus", "test_cpus"):
        v = raw.get(key)
        if v is not None:
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise BadInput(f"{w}: `{key}` must be a whole number of cpus >= 1")
            setattr(out, key, v)
    for key in ("connect_timeout", "wait_workers_s", "no_worker_timeout_s"):
        v = raw.get(key)
        if v is not None:
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                raise BadInput(f"{w}: `{key}` must be seconds > 0")
            setattr(out, key, float(v))
    return out


# ================================================================ worker side

def current_worker():
    try:
        from distributed import get_worker
        return get_worker()
    except (ImportError, ValueError):
        return None


def accel_here() -> str:
    from rig.machine.qemu import kvm_works
    return "kvm" if kvm_works() else "tcg"


def here() -> dict:
    """Who is running this task: worker name, address, host, declared resources, accel QEMU would use."""
    w = current_worker()
    if w is None:
        return {"worker": "driver", "address": None, "host": socket.gethostname(), "resources": {},
                "accel": accel_here()}
    addr = w.address
    name = w.name
    if isinstance(name, int) or (isinstance(name, str) and name.isdigit()):
        name = "embedded" if str(addr).startswith("inproc://") else f"{socket.gethostname()}-{name}"
    res = {k: v for k, v in w.state.total_resources.items() if not k.startswith("objtree-")}
    return {"worker": str(name), "address": addr, "host": socket.gethostname(), "resources": res,
            "accel": accel_here()}


def declare_resource(name: str, quantity: float = 1.0) -> None:
    """Declare a resource on the worker running this task, before the task returns (so the scheduler knows
    it when the dependents become ready)."""
    w = current_worker()
    if w is None:
        return
    from distributed.utils import sync
    sync(w.loop, w.set_resources, **{name: float(quantity)})


async def drop_resources(prefix: str, dask_worker=None) -> int:
    """client.run() target at the end of a run: zero this run's objtree-* resources on a worker."""
    names = [r for r in dask_worker.state.total_resources if r.startswith(prefix)]
    if names:
        await dask_worker.set_resources(**{r: 0.0 for r in names})
    return len(names)


def emit(topic: str | None, line: str) -> None:
    """A progress line for the driver (Dask event on TOPIC); nothing outside a worker."""
    w = current_worker()
    if w is None or not topic:
        return
    try:
        w.log_event(topic, {"line": line})
    except Exception:       # progress must never fail a task
        pass


# ================================================================ driver side: the session

@dataclass
class Session:
    client: Any
    cluster: Any
    embedded: bool
    address: str
    dashboard: str | None
    build_cpus: int
    test_cpus: int
    no_worker_timeout_s: float = DEFAULT_NO_WORKER_S

    def workers(self) -> dict[str, dict]:
        info = self.client.scheduler_info(n_workers=-1)["workers"]
        return {a: {"name": str(w.get("name")), "host": w.get("host"), "nthreads": w.get("nthreads"),
                    "resources": dict(w.get("resources") or {})} for a, w in info.items()}

    def can_run(self, resources: dict, workers: dict | None = None) -> bool:
        """Does a worker (of WORKERS, default: the scheduler's current ones) offer RESOURCES?"""
        workers = self.workers() if workers is None else workers
        return any(all(w["resources"].get(r, 0) >= q for r, q in resources.items()) for w in workers.values())

    def describe(self) -> list[str]:
        head = ("embedded Dask cluster (this process)" if self.embedded else f"Dask scheduler {self.address}")
        lines = [head + (f"; dashboard {self.dashboard}" if self.dashboard else
                         "; no dashboard (install bokeh where the scheduler runs)")]
        for a, w in sorted(self.workers().items(), key=lambda x: x[1]["name"]):
            res = ", ".join(f"{k}={v:g}" for k, v in sorted(w["resources"].items()) if not k.startswith("objtree-"))
            name = "embedded" if a.startswith("inproc://") else w["name"]
            lines.append(f"worker {name} ({a}, {w['nthreads']} threads, {res or 'no resources'})")
        lines.append(f"builds ask for cpus={self.build_cpus}, tests for cpus={self.test_cpus} (+ kvm=1 when KVM-only)")
        return lines

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close()


def _has_bokeh() -> bool:
    try:
        import bokeh  # noqa: F401
        return True
    except ImportError:
        return False


def _dashboard(client) -> str | None:
    try:
        services = client.scheduler_info(n_workers=0).get("services") or {}
    except Exception:
        return None
    if "dashboard" not in services:
        return None
    with contextlib.suppress(Exception):
        return client.dashboard_link
    return None


@contextlib.contextmanager
def _quiet_embedded() -> Iterator[None]:
    """The embedded cluster is an implementation detail: its own log chatter stays out of the nightly's."""
    names = ("distributed", "distributed.worker", "distributed.scheduler", "distributed.nanny", "distributed.core")
    old = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, lvl in old.items():
            logging.getLogger(n).setLevel(lvl)


def _embedded(ccfg: ClusterCfg, inproc: bool) -> Session:
    from distributed import Client, LocalCluster
    ncpu = os.cpu_count() or 1
    if inproc:
        # stand-ins for kproto test in this very process (tests): one task at a time, in matrix order
        resources: dict[str, float] = {RES_CPUS: 1.0}
        build_cpus = test_cpus = 1
    else:
        resources = {RES_CPUS: float(ncpu)}
        build_cpus = min(ccfg.build_cpus or ncpu, ncpu)          # one kernel build at a time on the machine
        test_cpus = min(ccfg.test_cpus or GUEST_CPUS, ncpu)      # a guest's vCPUs: 1 boot at a time on 2 cores
    if accel_here() == "kvm":
        resources[RES_KVM] = 1.0
    cluster = LocalCluster(n_workers=1, processes=False, threads_per_worker=max(2, ncpu), resources=resources,
                           dashboard_address="127.0.0.1:0", memory_limit=0)
    client = Client(cluster, set_as_default=False)
    return Session(client=client, cluster=cluster, embedded=True, address=cluster.scheduler_address,
                   dashboard=_dashboard(client) if _has_bokeh() else None, build_cpus=build_cpus, test_cpus=test_cpus,
                   no_worker_timeout_s=ccfg.no_worker_timeout_s)


def normalize_address(addr: str) -> str:
    a = addr.strip()
    return a if "://" in a else f"tcp://{a}"


def _connect(addr: str, ccfg: ClusterCfg) -> Session:
    from distributed import Client
    from distributed.comm import parse_address, parse_host_port
    addr = normalize_address(addr)
    try:
        proto, loc = parse_address(addr)
        host, port = parse_host_port(loc, default_port=8786)
    except (ValueError, TypeError) as e:
        raise BadInput(f"scheduler address {addr!r} is not tcp://HOST:PORT ({e})") from None
    hint = "start it with `dask scheduler` (docs/cluster.md) or fix --scheduler / [cluster] scheduler"
    if proto in ("tcp", "tls"):
        try:
            with socket.create_connection((host, int(port)), timeout=min(5.0, ccfg.connect_timeout)):
                pass
        except OSError as e:
            why = e.strerror or type(e).__name__
            raise SchedulerUnreachable(f"cannot reach the Dask scheduler at {addr}: {why.lower()}; {hint}") from None
    try:
        client = Client(addr, timeout=ccfg.connect_timeout, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise SchedulerUnreachable(f"the Dask scheduler at {addr} did not answer: "
                                   f"{' '.join(str(e).split())[:200]}; {hint}") from None
    try:
        try:
            from rig.nightly.cluster_worker import KprotoWorkerPlugin
            client.register_plugin(KprotoWorkerPlugin(), name=KprotoWorkerPlugin.name)
        except Exception as e:
            raise InfraError(f"the kproto worker plugin failed on a worker of {addr} (is kproto installed there? "
                             f"see setup.sh): {' '.join(str(e).split())[:200]}") from None
        try:
            client.wait_for_workers(1, timeout=ccfg.wait_workers_s)
        except (TimeoutError, OSError):
            raise InfraError(f"no Dask worker joined the scheduler at {addr} within {ccfg.wait_workers_s:.0f} s; "
                             f"start some: dask worker {addr} [--resources \"kvm=1\"]") from None
        time.sleep(0.2)          # the plugin's resource declarations of the workers that just joined
        sess = Session(client=client, cluster=None, embedded=False, address=addr, dashboard=_dashboard(client),
                       build_cpus=1, test_cpus=1, no_worker_timeout_s=ccfg.no_worker_timeout_s)
        most = max([w["resources"].get(RES_CPUS, 0) for w in sess.workers().values()] + [0])
        if most < 1:
            raise InfraError(f"no worker of {addr} offers the `cpus` resource; start workers with "
                             f"--preload rig.nightly.cluster_worker or --resources \"cpus=N\"")
        sess.build_cpus = ccfg.build_cpus or int(min(GUEST_CPUS, most))
        sess.test_cpus = ccfg.test_cpus or int(min(GUEST_CPUS, most))
        if not sess.can_run({RES_CPUS: sess.build_cpus}):
            raise InfraError(f"no worker of {addr} offers cpus >= {sess.build_cpus} for a kernel build "
                             f"(lower [cluster] build_cpus or add cores)")
        return sess
    except BaseException:
        client.close()
        raise


@contextlib.contextmanager
def session(ccfg: ClusterCfg | None, scheduler: str | None = None, inproc: bool = False) -> Iterator[Session]:
    """The cluster a nightly runs on: SCHEDULER (or [cluster] scheduler) when given, else an embedded
    LocalCluster sized to this machine. An unreachable scheduler raises SchedulerUnreachable at once."""
    ccfg = ccfg or ClusterCfg()
    addr = scheduler or ccfg.scheduler
    if addr and inproc:
        raise BadInput("in-process test stand-ins (callables) cannot run on a Dask scheduler; "
                       "pass them as 'module:function' so that the workers can import them")
    if addr:
        sess = _connect(addr, ccfg)
        try:
            yield sess
        finally:
            sess.close()
    else:
        with _quiet_embedded():
            sess = _embedded(ccfg, inproc)
            try:
                yield sess
            finally:
                sess.close()
