"""Differential fuzzing of file-operation sequences (`kproto fuzz`): a target overlay vs the reference,
shrunk with hypothesis to a standalone C reproducer and, when asked, a new guest test.

Modules, in data-flow order:
- fixture.py     the layer fixture every sequence starts from (paths on lower, on upper, nowhere);
- ops.py         THE operation table: one row per operation (weight, argument grammar and generation,
                 slot effect, C emission, pseudo key); op lines and sequence text;
- strategies.py  hypothesis strategies drawing sequences from the table;
- interp.py      the C interpreter guest_tests/fuzz/opinterp.c (built by rig.guest.programs) and its output;
- targets.py     where sequences run: plain dir, host overlayfs, reference overlay, guest kernel over SSH
                 (mounts through THE mounter, rig.guest.mount; the guest's console watched for splats
                 around every batch, fresh boots for probes);
- findings.py    the first difference of two runs, known divergences (rig.analysis.known), Finding (a
                 divergence and/or a kernel splat), FuzzResult;
- search.py      the search loop (hypothesis.find rounds), one_minimal()/minimise(), the budget; splats
                 attributed to a sequence and shrunk on fresh boots (SplatHunter, minimise_splat);
- emit.py        a finding as a C reproducer and as a guest test;
- splatcheck.py  a splat finding's reproducer run on fresh boots of the patched and the baseline kernel.
The command is rig/cli/cmd_fuzz.py.
"""
