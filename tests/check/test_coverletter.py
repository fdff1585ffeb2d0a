"""The cover-letter "Testing:" section rendered from a hand-made `kproto test --json` report (docs/design.md §4)."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from rig.check import coverletter
from rig.cli.main import main

SERIES = Path(__file__).resolve().parent.parent / "data" / "series"
TEST_JSON = SERIES / "test-report.json"
BENCH_JSON = SERIES / "bench-report.json"


def report() -> dict:
    return json.loads(TEST_JSON.read_text())


def test_header_names_kernel_base_config_and_series():
    text = coverletter.render(report())
    assert text.startswith("Testing:\n")
    assert "Tested with kproto on Linux 6.12.117+ (base c1112cf8ff42,\n      /usr/src/linux-source-6.12.tar.xz) in QEMU (tcg)." in text
    assert "Config: tinyconfig + the kproto fragment (" in text
    assert "CONFIG_PROVE_LOCKING=y" in text and "CONFIG_DEBUG_ATOMIC_SLEEP=y" in text
    assert "Series: 2 patches" in text and "0002-ovl-map-the-current-real-file-in-ovl_mmap.patch" in text
    assert all(len(line) <= 76 for line in text.splitlines()), text


def test_fixed_regressed_diverging_and_unchanged():
    text = coverletter.render(report())
    assert ("  Fixed by this series (diverged from the reference before, agree now):\n"
            "    - mmap_shared_ro_after_copyup\n"
            "        mmap_data: base kernel foo, patched bar, reference bar\n") in text
    # no "diffs" in the report for this one: derived from the observations
    assert "    - flock_before_copyup_held_after\n        flock_after: base kernel EWOULDBLOCK, patched ok" in text
    assert "REGRESSED by this series" in text
    assert "Still diverging from the reference, before and after:\n      mmap_shared_ro_before_copyup." in text
    assert "Unchanged and matching the reference: 2." in text


def test_new_splats_are_listed_with_titles():
    text = coverletter.render(report())
    assert ("  New kernel warnings with this series:\n"
            "    - lockdep: possible circular locking dependency detected in ovl_mmap\n") in text


def test_quiet_run_says_none():
    r = report()
    r["tests"] = [t for t in r["tests"] if t["status"] != "regressed"]
    r["splats"] = {"baseline": [], "patched": [], "new": []}
    text = coverletter.render(r)
    assert "  Regressions: none.\n" in text
    assert "  Splats: none new (base kernel: 0, patched: 0).\n" in text
    assert "Performance" not in text


def test_bench_summary():
    text = coverletter.render(report(), json.loads(BENCH_JSON.read_text()))
    assert "    - mmap_read_4k: 812 -> 790.5 MB/s (-2.6%, CI -4.1%..-1.2%, 10 runs)\n" in text
    assert "    - open_close: 152000 -> 151000 ops/s (-0.7%, CI -2.0%..+0.7%, 10 runs),\n        not significant" in text


def test_config_named_in_report_is_used(tmp_path):
    frag = tmp_path / "kasan.config"
    frag.write_text("CONFIG_KASAN=y\n")
    r = report()
    r["config"] = [str(frag)]
    text = coverletter.render(r)
    assert "CONFIG_KASAN=y" in text and "kasan.config" in text


def test_cli_cover_letter(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["cover-letter", str(TEST_JSON), str(BENCH_JSON)])
    assert res.exit_code == 0, res.output
    assert res.output == coverletter.render(report(), json.loads(BENCH_JSON.read_text()))
    out = tmp_path / "testing.txt"
    res = runner.invoke(main, ["cover-letter", str(TEST_JSON), "-o", str(out)])
    assert res.exit_code == 0 and out.read_text().startswith("Testing:")


def test_cli_cover_letter_bad_input(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["cover-letter", str(tmp_path / "missing.json")])
    assert res.exit_code == 2 and "not found" in res.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"metrics": []}))
    res = runner.invoke(main, ["cover-letter", str(bad)])
    assert res.exit_code == 2 and "missing key(s) verdict, kernel, tests" in res.output
    res = runner.invoke(main, ["cover-letter", str(TEST_JSON), str(TEST_JSON)])
    assert res.exit_code == 2 and "missing key(s) metrics" in res.output
