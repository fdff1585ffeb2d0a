"""Fixtures of the orchestration tests that drive `kproto test` (and bisect) through the fake machine."""
from __future__ import annotations

import pytest

from fake_machine import FAST
from rig.suite import runner, testrun


@pytest.fixture
def fast_runner(monkeypatch):
    """kproto test's runner with the fake machine's short waits."""
    monkeypatch.setattr(runner, "TIMING", FAST)
    orig = runner.run_kernel_suite

    def fast(*a, **kw):
        kw["timing"] = FAST
        return orig(*a, **kw)
    monkeypatch.setattr(testrun, "run_kernel_suite", fast)
