"""bench/report.py: the goal lines are computed from the figures, never enforced."""

from __future__ import annotations

from bench.report import goals_agent, markdown


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
    assert "ADD p50 @ 1000 / ADD p50 @ 0 <= 1.1x: missed (1.15)" in text
    assert "<= 2x `python3 -c pass`: met (1.50)" in text
    assert "berth (standalone) chain ADD p50 < reference @ 1000: met (0.25)" in text
    assert "growth measured up to" not in text


def test_issue10_goals_not_measured() -> None:
    text = goals_agent({"levels": {"0": {"berth": level(250, 240), "ref": level(100, 200)}}})
    assert "not measured (`--levels 0,200`)" in text and "berth-agent chain" not in text


def test_growth_against_the_empty_node_of_the_same_rounds() -> None:
    """An empty baseline node sampled with the top level is what growth is measured against."""
    fig = {
        "levels": {
            "0": {"berth-agent": level(30, 50), "ref": level(100, 200)},
            "1000": {"berth-agent": level(46, 55), "berth-agent@empty": level(44, 50), "ref": level(1200, 900)},
        },
    }
    text = goals_agent(fig)
    assert "ADD p50 @ 1000 / ADD p50 on an empty node (same rounds) <= 1.1x: met (1.05)" in text
    table = markdown(fig, ["berth-agent", "ref"], {})
    assert "| chain ADD p50 ms, empty node in the same rounds as @ 1000 | 44 | n/a |" in table
