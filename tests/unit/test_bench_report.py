"""bench/report.py: the goal lines are computed from the figures, never enforced."""

from __future__ import annotations

from bench.report import goals_agent


def level(add: float, delete: float) -> dict[str, dict[str, float]]:
    return {"add": {"p50_ms": add}, "del": {"p50_ms": delete}}


def test_issue10_goals_from_figures() -> None:
    fig = {
        "levels": {
            "0": {"berth-agent": level(40, 50), "berth": level(250, 240), "ref": level(100, 200)},
            "1000": {"berth-agent": level(46, 55), "berth": level(300, 290), "ref": level(1200, 900)},
        },
        "startup": {"berth-agent": {"p50_ms": 18.0}, "python3 -c pass": {"p50_ms": 12.0}},
    }
    text = goals_agent(fig)
    assert "chain ADD p50 <= 0.5x reference (@ 0): met (0.40)" in text
    assert "chain DEL p50 <= 0.3x reference (@ 0): missed (0.25)" not in text
    assert "chain DEL p50 <= 0.3x reference (@ 0): met (0.25)" in text
    assert "ADD p50 @ 1000 <= 1.1x ADD p50 @ 0: missed (1.15)" in text
    assert "<= 2x `python3 -c pass`: met (1.50)" in text
    assert "berth (standalone) chain ADD p50 < reference @ 1000: met (0.25)" in text
    assert "growth measured up to" not in text


def test_issue10_goals_not_measured() -> None:
    text = goals_agent({"levels": {"0": {"berth": level(250, 240), "ref": level(100, 200)}}})
    assert "not measured (`--levels 0,200`)" in text and "berth-agent chain" not in text
