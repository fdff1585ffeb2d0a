"""`kproto bench`: what a patch costs on the overlay read path, baseline vs patched, with confidence.

One concern per module, in the order a run goes through them:

- programs.py   the benchmark programs (guest_tests/bench/*.c) through THE static-program cache
- readings.py   what they print: `name=value unit higher|lower` lines -> Reading
- script.py     the shell of one repetition (fresh layers, mount, run, unmount) and its layer paths
- vm.py         the benchmark guest: rig.machine.qemu.VM plus -icount under TCG
- sides.py      where repetitions run: GuestSide (a fresh QEMU boot per round), HostSide (host overlayfs
                or the reference overlay); mount lines from THE mounter, rig.guest.mount
- simulate.py   SimulatedSide: seeded readings, no VM (tests, bench/bench_aa_false_alarm.py)
- stats.py      the arithmetic: medians, bootstrap and paired-round intervals, Welch's t, Holm, the alpha
                split over the adaptive looks
- metrics.py    per metric: MetricResult, the significance and decision rules, Collected samples
- run.py        BenchOptions and run_bench(): two sides interleaved, adaptive rounds while undecided
- modes.py      the two kinds of run (kernels, host-vs-ref) -> Outcome
- report.py     the `%stddev %change %stddev` table and the JSON report (docs/design.md §4)

The command itself (options, kernel preparation through rig.kernel.prepare, exit codes) is
rig/cli/cmd_bench.py. Nothing is re-exported here: import the module that holds the name.
"""
