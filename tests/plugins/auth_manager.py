"""An auth manager for the run view's tests: Airflow's SimpleAuthManager, except that user `outsider` may read
only the DAG `batch_smoke`, so that a refusal by DAG-level authorisation can be shown."""
from __future__ import annotations

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

OUTSIDER = "outsider"
OUTSIDERS_DAG = "batch_smoke"


class OneDagAuthManager(SimpleAuthManager):
    def is_authorized_dag(self, *, method, user, access_entity=None, details=None) -> bool:
        if user.get_name() == OUTSIDER and (details is None or details.id != OUTSIDERS_DAG):
            return False
        return super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)
