"""Where the repository is: the endpoint reads `config/` there, and puts the Airflow side's code beside it on the path."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
