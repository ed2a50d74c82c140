"""The history ablation's design and verdicts (benchmarks/history_ablation.py): each variant
differs from "all on" by one thing, and a technique "helps" only when it beats its absence and
its shuffled control beyond the seed spread.

Checked once against broken variants by hand: a verdict that compares with the technique's
absence alone calls the capacity-only technique below "helps"; a shuffled variant built on the
preset's defaults (the techniques off) fails the design test.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import history_ablation as bench
import pytest


def test_each_variant_differs_from_all_on_by_one_thing():
    variants = {variant.name: variant for variant in bench.variants()}
    on = variants[bench.ALL_ON]
    assert all(on.model.techniques.values()) and on.shuffle == ()
    assert not any(variants[bench.ALL_OFF].model.techniques.values())
    for technique in bench.TECHNIQUES:
        off = variants[technique.off]
        changed = [k for k, v in off.model.techniques.items() if v != on.model.techniques[k]]
        assert changed == [technique.switch] and off.shuffle == ()
        control = variants[technique.shuffled]
        assert control.model == on.model and control.shuffle == (technique.channel,)
    assert len(variants) == 2 + len(bench.TECHNIQUES) + len(bench.SHUFFLED)


def _table(on: float, off: dict[str, float], shuffled: dict[str, float]) -> dict:
    """Losses of three seeds around each mean (spread 0.01)."""

    def seeds(mean: float) -> dict[int, float]:
        return {0: mean - 0.01, 1: mean, 2: mean + 0.01}

    table = {bench.ALL_ON: seeds(on), bench.ALL_OFF: seeds(off["all"])}
    for technique in bench.TECHNIQUES:
        table[technique.off] = seeds(off[technique.name])
        table[technique.shuffled] = seeds(shuffled[technique.channel])
    return table


def test_a_technique_helps_only_when_it_beats_its_absence_and_its_shuffled_control():
    off = {
        "all": 5.0,
        "repository embedding": 5.3,  # on is 0.3 better than without it...
        "temporal attention": 5.3,  # ... and this one's control gains as much: capacity
        "contrastive loss": 5.0,
        "language routing": 4.9,  # worse with it than without
    }
    shuffled = {"repo": 5.3, "time": 5.0, "language": 5.0}
    rows = {row["technique"]: row for row in bench.verdicts(_table(5.0, off, shuffled))}
    assert rows["repository embedding"]["verdict"] == "helps"
    assert rows["repository embedding"]["aim_met"]
    assert rows["temporal attention"]["verdict"] == "no effect"
    assert rows["contrastive loss"]["verdict"] == "no effect"
    assert rows["language routing"]["verdict"] == "hurts"
    assert rows["repository embedding"]["gap_to_off"] == pytest.approx(0.3)
