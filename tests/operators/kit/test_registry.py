"""The model registry (operators.kit.registry): statuses, the current version and finality, and publish."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pandas as pd
import pytest

from operators.kit import registry
from tests.operators.kit.test_evaluation import run_evaluation


def test_registry_statuses_current_and_finality(tmp_path):
    models = registry.Registry(str(tmp_path), "scores", aws_conn_id=None)
    args = dict(metrics={"m": 1}, input_stats={}, lineage={"run_id": "r"}, proposed="review", reasons=[])
    first = models.register("2026-02-16_a", **args)
    assert first["status"] == registry.PENDING and models.current() is None
    models.decide("2026-02-16_a", registry.APPROVED, by="person:pat")
    assert models.current()["version"] == "2026-02-16_a"
    models.register("2026-02-23_b", **args)
    models.decide("2026-02-23_b", registry.REJECTED, by="thresholds")
    assert models.current()["version"] == "2026-02-16_a"  # a rejected version never becomes current
    with pytest.raises(registry.RegistryError, match="already Rejected"):
        models.decide("2026-02-23_b", registry.APPROVED, by="person:pat")
    again = models.register("2026-02-16_a", **args)  # the same run evaluated again: a new version
    assert again["version"] == "2026-02-16_a-r2" and again["status"] == registry.PENDING
    assert [v["version"] for v in models.versions()] == ["2026-02-16_a", "2026-02-23_b", "2026-02-16_a-r2"]


def test_publish_copies_an_approved_artifact_to_current_and_its_version_folder(data_root):
    first = run_evaluation(data_root, [0.1, 0.2, 0.3, 0.4], "r1")
    with pytest.raises(registry.RegistryError, match="is PendingManualApproval; only an Approved version"):
        registry.publish("scores", first["version"])
    models = registry.Registry(str(data_root), "scores", aws_conn_id=None)
    models.decide(first["version"], registry.APPROVED, by="thresholds")
    current = registry.publish("scores", first["version"], aws_conn_id=None)
    assert current == str(data_root / "published" / "scores" / "current" / "outputs.parquet")
    versioned = data_root / "published" / "scores" / "versions" / first["version"] / "outputs.parquet"
    assert Path(current).read_bytes() == versioned.read_bytes() == Path(first["artifact"]).read_bytes()
    pointer = json.loads((data_root / "published" / "scores" / "current" / "version.json").read_text())
    assert pointer["version"] == first["version"] and pointer["artifact"] == str(versioned)

    second = run_evaluation(data_root, [0.5, 0.6, 0.7, 0.8], "r2")
    models.decide(second["version"], registry.APPROVED, by="thresholds")
    # a reader polling `current` while versions are published sees one whole artifact or the other
    seen, failures, stop = set(), [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                seen.add(round(float(pd.read_parquet(current)["score"].sum()), 6))
            except Exception as error:  # noqa: BLE001 - any torn read is the failure looked for
                failures.append(repr(error))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    for _ in range(30):
        for version in (second["version"], first["version"]):
            registry.publish("scores", version, aws_conn_id=None)
    stop.set()
    thread.join(timeout=30)
    assert failures == [] and seen <= {1.0, 2.6}
    assert not [p for p in (data_root / "published").rglob(".tmp-*")]
