"""The spec of the project's AWS Batch resources, `config/batch_resources.json`: compute environments, job queues
(and each queue's fallback), job definitions, the job role, the retry strategy and the alarms.

`operators.kit.provisioning` applies it; the shard operator, the alarms and the local endpoint read it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SPEC = REPO / "config" / "batch_resources.json"


def load_spec(path: Path | str = DEFAULT_SPEC) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
