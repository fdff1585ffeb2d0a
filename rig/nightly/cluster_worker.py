"""The worker side of kproto's Dask cluster (docs/cluster.md).

The nightly driver registers KprotoWorkerPlugin on every worker of the scheduler it uses (workers that join
later get it too); `dask worker tcp://HOST:8786 --preload rig.nightly.cluster_worker` does the same before any
client connects. Either way a worker that did not declare the `cpus` resource gets its core count, so a
plain `dask worker tcp://HOST:8786 --resources "kvm=1"` can build and test. Workers need kproto installed
(setup.sh) to import this module and the nightly's task functions (rig.nightly.graph).
"""
from __future__ import annotations

import os

from distributed.diagnostics.plugin import WorkerPlugin

from rig.nightly.cluster import RES_CPUS


def declare_defaults(worker) -> dict:
    """The resources this worker is missing: `cpus` = its core count unless declared."""
    if RES_CPUS in worker.state.total_resources:
        return {}
    return {RES_CPUS: float(os.cpu_count() or 1)}


class KprotoWorkerPlugin(WorkerPlugin):
    name = "kproto-worker"
    idempotent = True

    async def setup(self, worker) -> None:
        add = declare_defaults(worker)
        if add:
            await worker.set_resources(**add)


async def dask_setup(worker) -> None:
    """`dask worker ... --preload rig.nightly.cluster_worker`."""
    add = declare_defaults(worker)
    if add:
        await worker.set_resources(**add)
