"""The CLI progress bar (``cli._common.Progress``): counts and rates are right.

The bar is driven directly on a simulated clock; what it writes to stderr is read back.
"""

from __future__ import annotations

import io
import re
import sys
import time

import pytest

from napari_tessera.cli._common import Progress

RATE = re.compile(r"<[^,\]]*,\s*(\?|\d+(?:\.\d+)?)\s*(\w+/s|s/\w+)")
COUNT = re.compile(r"(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?) \[")


class Clock:
    def __init__(self, monkeypatch):
        self.now = 1000.0
        monkeypatch.setattr(time, "perf_counter", lambda: self.now)
        monkeypatch.setattr(time, "monotonic", lambda: self.now)

    def tick(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    return Clock(monkeypatch)


def lines(err: str) -> list[str]:
    """Every line written, redrawn ones (``\\r``) included."""
    return [part.strip() for part in re.split(r"[\r\n]", err) if part.strip()]


def rate(line: str) -> float | None:
    """Units per second a bar line shows (None: ``?``)."""
    m = RATE.search(line)
    assert m, f"no rate in {line!r}"
    if m.group(1) == "?":
        return None
    value = float(m.group(1))
    return 1 / value if m.group(2).startswith("s/") else value


def near(expected: float):
    """A rate as shown: two decimals (of units/s, or of s/unit below one a second)."""
    return pytest.approx(expected, rel=2e-3, abs=6e-3)


def count(line: str) -> tuple[float, float]:
    m = COUNT.search(line)
    assert m, f"no count in {line!r}"
    return float(m.group(1)), float(m.group(2))


def test_one_tile(clock, capsys):
    bar = Progress(False, "segment", "tile")
    clock.tick(0.25)  # the tile takes a quarter of a second
    bar.update(1, 1)
    clock.tick(0.5)  # writing the output
    bar.close()
    shown = lines(capsys.readouterr().err)
    assert len(shown) == 1, shown  # no 0/1 first, no second 1/1
    assert shown[0].startswith("segment:") and count(shown[0]) == (1, 1)
    assert rate(shown[0]) == near(1 / 0.25)  # 4.00 tile/s


def test_one_slow_tile(clock, capsys):
    bar = Progress(False, "segment", "tile")
    clock.tick(2.5)
    bar.update(1, 1)
    bar.close()
    (line,) = lines(capsys.readouterr().err)
    assert count(line) == (1, 1) and rate(line) == near(1 / 2.5)


@pytest.mark.parametrize("total", [1, 10])
def test_no_rate_from_a_near_zero_interval(clock, capsys, total):
    """An update that comes right after the bar starts shows no rate of ~100000/s."""
    bar = Progress(False, "segment", "tile")
    clock.tick(2e-5)
    bar.update(1, total)
    for done in range(2, total + 1):
        clock.tick(0.5)
        bar.update(done, total)
    bar.close()
    shown = lines(capsys.readouterr().err)
    assert shown
    for line in shown:
        r = rate(line)
        assert r is None or r < 3, line  # the true average never passes 2 tiles/s here
    if total > 1:  # the final line has the true average over the whole run
        assert rate(shown[-1]) == near(total / (2e-5 + 0.5 * (total - 1)))


def test_final_count_once_with_the_average_rate(clock, capsys):
    bar = Progress(False, "train", "step")
    for step in range(1, 31):
        clock.tick(0.5)
        bar.update(step, 30, loss=f"{1 / step:.3f}")
    clock.tick(3.0)  # saving the model
    bar.close()
    shown = lines(capsys.readouterr().err)
    finals = [line for line in shown if count(line)[0] == 30]
    assert len(finals) == 1, shown
    assert shown[-1] == finals[0] and "loss=0.033" in finals[0]
    assert rate(finals[0]) == near(30 / 15.0)
    for line in shown:  # every rate shown is the average up to its line
        r = rate(line)
        assert r is None or r == near(2.0), line


def test_folder_fractional_counts(clock, capsys):
    """A folder run counts files with fractions and reports its last file twice (its last
    tile, then the file written): the final count is printed once, as a whole number."""
    bar = Progress(False, "segment", "file")
    for done in (0.01, 0.5, 1.0, 1.0, 2.37, 150.5, 200.0, 200.0):
        clock.tick(11)
        bar.update(round(done, 2), 200, file="a.tif")
    bar.close()
    shown = lines(capsys.readouterr().err)
    assert any("2.37/200" in line for line in shown), shown
    finals = [line for line in shown if "200/200" in line]
    assert len(finals) == 1 and shown[-1] == finals[0], shown
    assert not any("200.0" in line for line in shown), shown
    assert rate(finals[0]) == near(200 / (8 * 11))


def test_interrupted_bar_ends_on_its_last_count_once(clock, capsys):
    bar = Progress(False, "train", "step")
    for step in (1, 2, 3):
        clock.tick(20)
        bar.update(step, 100)
    clock.tick(30)  # the stop request, the checkpoint
    bar.close()
    shown = lines(capsys.readouterr().err)
    assert [count(line)[0] for line in shown] == [1, 2, 3], shown
    assert rate(shown[-1]) == near(3 / 60)


def test_a_log_gets_few_lines(clock, capsys):
    """Into a file or a pipe the bar writes whole lines, and not one per update."""
    bar = Progress(False, "segment", "tile")
    for done in range(1, 1001):
        clock.tick(0.05)
        bar.update(done, 1000)
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    shown = lines(err)
    assert 2 <= len(shown) <= 10, shown
    assert count(shown[-1]) == (1000, 1000) and rate(shown[-1]) == near(20)


def test_terminal_redraws_in_place(clock, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    bar = Progress(False, "segment", "tile")
    clock.tick(0.25)
    bar.update(1, 1)
    bar.close()
    text = term.getvalue()
    assert text.count("1/1") == 1 and text.endswith("\n") and text.count("\n") == 1, text
    assert rate(lines(text)[0]) == near(4)

    term.seek(0)
    term.truncate()
    bar = Progress(False, "segment", "tile")
    for done in range(1, 5):
        clock.tick(0.5)
        bar.update(done, 4)
    bar.close()
    text = term.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n"), text
    shown = lines(text)
    assert [count(line)[0] for line in shown] == [1, 2, 3, 4], shown
    assert rate(shown[-1]) == near(2)


def test_quiet_prints_nothing(clock, capsys):
    bar = Progress(True, "segment", "tile")
    clock.tick(1)
    bar.update(1, 2, file="a.tif")
    clock.tick(1)
    bar.update(2, 2)
    bar.close()
    assert capsys.readouterr() == ("", "")


def test_nothing_before_the_first_update(clock, capsys):
    """An error before any progress stays a one-line message."""
    bar = Progress(False, "segment", "tile")
    clock.tick(1)
    bar.close()
    assert capsys.readouterr().err == ""


def test_a_resumed_run_counts_only_its_own_steps(clock, capsys):
    """Training resumed at step 5001 of 10000: 10 steps in 5 s is 2 step/s, not 1002."""
    bar = Progress(False, "train", "step")
    bar.begin_at(5000)
    for step in range(5001, 5011):
        clock.tick(0.5)
        bar.update(step, 10000)
    bar.close()
    final = lines(capsys.readouterr().err)[-1]
    assert count(final) == (5010, 10000)
    assert rate(final) == near(2.0)
