"""The check that makes a benchmark's two sides comparable: the same units and results."""
from __future__ import annotations

import pandas as pd

from benchmarks.compare import differences


def frame(**changes) -> pd.DataFrame:
    base = {"unit": ["b", "a", "c"], "status": ["ok", "ok", "degenerate"], "value": [1.0, 2.0, float("nan")]}
    return pd.DataFrame({**base, **changes})


def compared(left, right):
    return differences(left, right, key=["unit"], exact=["status"], close=["value"], names=("one", "other"))


def test_the_same_results_in_another_order_are_equal():
    assert compared(frame(), frame().iloc[::-1]) == []
    assert compared(frame(), frame(value=[1.0 + 1e-9, 2.0, float("nan")])) == []


def test_each_kind_of_difference_is_named():
    assert compared(frame(), frame(status=["ok", "failed", "degenerate"])) == ["status differs for 1 units"]
    assert compared(frame(), frame(value=[1.0, 2.1, float("nan")])) == ["value differs beyond 1e-6 for 1 units"]
    assert compared(frame(), frame(unit=["b", "a", "d"])) == ["units differ: 3 from one, 3 from other"]
    assert compared(frame(), frame().iloc[:2]) == ["units differ: 3 from one, 2 from other"]
