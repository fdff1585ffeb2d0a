"""`kproto nightly` (docs/nightly.md, docs/cluster.md), split by concern:

  config.py      CONFIG.toml: KernelCfg, SeriesCfg, NightlyConfig, load_config / parse_config
  run.py         one run: the lock, the run row, the matrix in matrix order, diff, reports, exit code
  engine.py      the Dask cluster of one run (embedded LocalCluster or a scheduler) and its stand-ins
  matrix.py      the driver's side of the task graph: submit it, then collect the cells in matrix order
  graph.py       the Dask tasks of a cell (baseline, patched, test, extra) and the protocol fingerprint
  specs.py       the plain data the driver and the tasks exchange
  stages.py      what runs per cell: baseline and patched kernels (rig.kernel.prepare), kproto test
                 (with --repro: a regressed series' reproducer bundles), bench/fuzz
  bisecting.py   the first bad patch of a regressed series (kproto bisect)
  subcommands.py kproto bench / kproto fuzz as child processes (their --json contracts)
  cluster.py     Dask plumbing: [cluster] table, sessions, worker resources, progress events
  children.py    the stage child processes, which never outlive their worker
  cluster_worker.py  the worker plugin (`dask worker --preload rig.nightly.cluster_worker`)
  placement.py   where each task ran: the log line, report.json's "cluster", report.html's section (the
                 driver also stores the records in the history's placement table)
  record.py      SeriesRecord, outcomes, splat / finding identity
  schema.py, store.py   the SQLite history database
  diff.py        what changed since the last complete run, and the exit code
  summary.py     summary.txt (the email body) and the one-line texts
  reports.py     report.json, report.html (templates/nightly.html.j2), JUnit per series
  history.py     `kproto history`
"""
