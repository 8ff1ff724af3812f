"""The packaging pipelines' input (operators.pipelines.packaging.source): synthetic labels need a first day to drift
from, and a given input_uri is used as it is."""
from __future__ import annotations

import datetime as dt

import pytest

from operators.pipelines.packaging.source import SyntheticLabels


def test_synthetic_source_needs_a_first_day_for_drift(tmp_path):
    params = {name: param.value for name, param in SyntheticLabels().params().items()}
    params.update(input_uri=None, dataset_drift=0.5)
    with pytest.raises(ValueError, match=r"dataset_drift \(0.5\) needs dataset_drift_from"):
        SyntheticLabels().resolve(params, str(tmp_path), dt.datetime(2026, 2, 2))
    assert SyntheticLabels().resolve({"input_uri": "/data/labels.csv"}, str(tmp_path), None) == "/data/labels.csv"
