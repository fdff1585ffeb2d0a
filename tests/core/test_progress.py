"""rig/core/progress.py: the rate/ETA arithmetic, and the two renderings (plain rate-limited lines when
stderr is not a terminal, one live \\r-rewritten line when it is), driven by a fake clock."""
from __future__ import annotations

import io
import re

import pytest

from rig.core import progress
from rig.core.progress import CLEAR, Reporter, Snapshot, eta, fmt_duration, rate


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def screen(raw: str) -> list[str]:
    """What a terminal shows after RAW: \\r + erase-line rewrites the current line."""
    lines = []
    for line in raw.split("\n"):
        lines.append(line.split(CLEAR)[-1])
    return [l for l in lines if l]


# ---------------------------------------------------------------- arithmetic

@pytest.mark.parametrize("s,text", [(0, "0 s"), (44.6, "45 s"), (185, "3 min 05 s"), (1045, "17 min 25 s"),
                                    (3725, "1 h 02 min"), (-3, "0 s")])
def test_durations_read_like_a_person_writes_them(s, text):
    assert fmt_duration(s) == text


def test_rate_needs_an_item_and_some_time():
    assert rate(0, 10) is None and rate(5, 0) is None
    assert rate(30, 10) == 3.0


def test_eta_from_the_rate_alone_when_nothing_is_known_about_the_last_build():
    assert eta(50, 100, 50.0) == pytest.approx(50.0)
    assert eta(300, 1200, 60.0) == pytest.approx(180.0)
    assert eta(0, 100, 5.0) is None                         # no item yet, no last build: no idea


def test_eta_blends_the_last_builds_duration_by_what_is_left():
    # half done at 1/s: the rate says 50 s; the last build (200 s) says 100 s left; weights 1/2, 1/2
    assert eta(50, 100, 50.0, expected_s=200.0) == pytest.approx(75.0)
    # nothing done yet: all from the last build
    assert eta(0, 100, 3.0, expected_s=200.0) == pytest.approx(200.0)
    # 90% done: mostly the rate
    assert eta(90, 100, 90.0, expected_s=500.0) == pytest.approx(0.9 * 10 + 0.1 * 50)


def test_eta_without_a_total_is_what_is_left_of_the_last_duration():
    assert eta(5, None, 10.0, expected_s=25.0) == pytest.approx(15.0)
    assert eta(5, None, 30.0, expected_s=25.0) is None      # overran: no made-up figure
    assert eta(5, None, 30.0) is None


def test_past_the_expected_total_there_is_no_eta():
    assert eta(100, 100, 10.0) is None and eta(120, 100, 10.0, expected_s=20.0) is None


def test_snapshot_text_has_count_percent_rate_elapsed_and_eta():
    text = Snapshot("building baseline kernel", "objects", 412, 1195, 130.0).text()
    assert re.fullmatch(r"building baseline kernel: 412/1195 objects \(34%\), ETA 4 min 07 s, 3\.2/s, 2 min 10 s elapsed", text), text
    assert Snapshot("b", "objects", 7, None, 4.0).text() == "b: 7 objects, 1.8/s, 4 s elapsed"
    assert "more than the 10 expected" in Snapshot("b", "objects", 12, 10, 4.0).text()


# ---------------------------------------------------------------- plain lines (CI logs)

def test_plain_lines_come_every_tenth_never_per_item():
    out: list[str] = []
    clock = Clock()
    rep = Reporter(out.append, clock=clock)
    rep.stage("building baseline kernel", 1000, unit="objects", note="make -j3 bzImage")
    for i in range(1, 1001):
        clock.t += 0.1
        rep.update(i)
    rep.done()
    assert out[0] == "building baseline kernel (make -j3 bzImage)"
    steps = out[1:-1]
    assert [int(re.search(r"\((\d+)%\)", l).group(1)) for l in steps] == [10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert out[-1] == "building baseline kernel: 1000 objects in 1 min 40 s"


def test_plain_lines_come_every_30_s_when_the_total_is_unknown_or_the_stage_stalls():
    out: list[str] = []
    clock = Clock()
    rep = Reporter(out.append, clock=clock)
    rep.stage("building patched kernel", unit="objects")
    for i in range(300):                   # 300 s, the count stuck at 5 (a long link step)
        clock.t += 1.0
        rep.update(5)
    rep.done("built")
    assert len(out) == 1 + 10 + 1
    assert out[1] == "building patched kernel: 5 objects, 0.2/s, 30 s elapsed"
    assert out[-2] == "building patched kernel: 5 objects, 1.0/min, 5 min 00 s elapsed"


def test_a_small_total_gives_at_most_one_line_per_tenth():
    out: list[str] = []
    clock = Clock()
    rep = Reporter(out.append, clock=clock)
    rep.stage("s", 3, unit="objects")
    for i in (1, 1, 1, 2, 2, 3):
        clock.t += 0.5
        rep.update(i)
    assert [l.split(": ")[1].split(",")[0] for l in out[1:]] == ["1/3 objects (33%)", "2/3 objects (66%)"]


@pytest.mark.parametrize("n, noun, want", [
    (1, "objects", "1 object"), (0, "objects", "0 objects"), (2, "objects", "2 objects"),
    (1, "tests", "1 test"), (1, "boots", "1 boot"), (1, "splats", "1 splat"), (1, "patches", "1 patch"),
    (3, "patches", "3 patches"), (1, "errors", "1 error"), (1, "bytes", "1 byte"), (1, "", "1 "),
])
def test_plural_agrees_with_the_count(n, noun, want):
    assert progress.plural(n, noun) == want


def test_one_object_is_an_object_in_every_rendering():
    assert Snapshot("b", "objects", 1, None, 4.0).text().startswith("b: 1 object, ")
    assert Snapshot("b", "objects", 0, 1, 4.0).text().startswith("b: 0/1 object (0%)")
    assert Snapshot("b", "objects", 1, 36, 4.0).text().startswith("b: 1/36 objects (2%)")
    assert Snapshot("b", "objects", 2, 1, 4.0).text().startswith("b: 2 objects (more than the 1 expected)")
    out: list[str] = []
    clock = Clock()
    rep = Reporter(out.append, clock=clock)
    rep.stage("building patched kernel", unit="objects")
    clock.t += 3
    rep.update(1)
    rep.done()
    assert out[-1] == "building patched kernel: 1 object in 3 s"
    rep.stage("s")                                           # no unit: no stray blank
    rep.update(1)
    rep.done()
    assert out[-1] == "s: 1 in 0 s"


def test_messages_pass_through_unchanged():
    out: list[str] = []
    rep = Reporter(out.append)
    rep("[baseline] 3/36 copyup-basic: pass")
    assert out == ["[baseline] 3/36 copyup-basic: pass"]


def test_a_terminal_that_is_not_a_tty_gets_plain_lines():
    out: list[str] = []
    stream = io.StringIO()
    rep = Reporter(out.append, terminal=lambda: stream, clock=Clock())
    rep.stage("s", 10)
    assert not rep.live
    rep.update(5)
    assert stream.getvalue() == "" and len(out) == 2


# ---------------------------------------------------------------- the live line (a terminal)

def test_live_line_is_rewritten_in_place_and_rate_limited():
    tty = TTY()
    clock = Clock()
    rep = Reporter(lambda m: tty.write(m + "\n"), terminal=lambda: tty, prefix="kproto: ", clock=clock)
    rep.stage("building baseline kernel", 100, unit="objects", expected_s=100.0)
    assert rep.live
    for i in range(1, 101):
        clock.t += 0.05                   # 20 updates a second, redrawn at most 5 times a second
        rep.update(i)
    raw = tty.getvalue()
    draws = raw.count(CLEAR + "kproto: building baseline kernel: ")
    assert 20 <= draws <= 27
    assert raw.count("\n") == 1                              # only the stage line so far
    assert screen(raw)[-1].startswith("kproto: building baseline kernel: 100/100 objects (100%)")
    rep.done()
    assert screen(tty.getvalue()) == ["building baseline kernel", "building baseline kernel: 100 objects in 5 s"]


def test_a_message_during_a_live_stage_goes_above_the_live_line():
    tty = TTY()
    clock = Clock()
    rep = Reporter(lambda m: tty.write(m + "\n"), terminal=lambda: tty, clock=clock)
    rep.stage("tests", 36, unit="tests")
    clock.t += 1
    rep.update(3)
    rep("[baseline] 3/36 copyup-basic: pass")
    shown = screen(tty.getvalue())
    assert shown[-2] == "[baseline] 3/36 copyup-basic: pass"
    assert shown[-1].startswith("tests: 3/36 tests (8%)")
    rep.done("")                                             # an interrupted stage: no summary line
    assert screen(tty.getvalue()) == ["tests", "[baseline] 3/36 copyup-basic: pass"]


def test_reporter_for_keeps_a_reporter_and_wraps_a_plain_callback():
    rep = Reporter(lambda m: None)
    assert progress.reporter_for(rep) is rep
    out: list[str] = []
    wrapped = progress.reporter_for(out.append)
    wrapped.stage("x")
    wrapped("hello")
    assert out == ["x", "hello"] and not wrapped.live


def test_update_outside_a_stage_is_ignored():
    out: list[str] = []
    rep = Reporter(out.append)
    rep.update(3)
    rep.done()
    assert out == []
