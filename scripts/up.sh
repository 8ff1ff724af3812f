#!/usr/bin/env bash
# make up: the local AWS endpoint plus `airflow standalone`; the web UI on http://localhost:8080.
set -euo pipefail
source "$REPO/scripts/localaws.sh"
API="http://localhost:${AIRFLOW__API__PORT:-8080}"

cleanup() {
  [[ -n "${AIRFLOW_PID:-}" ]] && kill "$AIRFLOW_PID" 2>/dev/null && wait "$AIRFLOW_PID" 2>/dev/null
  stop_endpoint
}
trap cleanup EXIT INT TERM

start_endpoint
python -m operators.provisioning apply
# standalone launches `airflow` subcommands by name: the venv's bin must lead PATH (scripts/env.sh did that).
command -v airflow >/dev/null || { echo "airflow is not on PATH" >&2; exit 1; }
airflow standalone >"$AIRFLOW_HOME/standalone.log" 2>&1 &
AIRFLOW_PID=$!
echo "waiting for the Airflow API server at $API (log: $AIRFLOW_HOME/standalone.log)"
# A run queued before the api-server answers fails its first task, so report ready only once it does.
for _ in $(seq 1 180); do
  if curl -fsS "$API/api/v2/monitor/health" 2>/dev/null | grep -q '"status":"healthy"'; then
    break
  fi
  kill -0 "$AIRFLOW_PID" 2>/dev/null || { echo "airflow standalone exited; see $AIRFLOW_HOME/standalone.log" >&2; exit 1; }
  sleep 2
done
curl -fsS "$API/api/v2/monitor/health" >/dev/null || { echo "Airflow did not become healthy in 6 minutes" >&2; exit 1; }
echo "Airflow is ready at $API"
echo "user: admin, password: in $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
wait "$AIRFLOW_PID"
