#!/usr/bin/env bash
# make demo: endpoint up, Batch provisioned, the main DAG run once with `airflow dags test`, summary printed.
set -euo pipefail
source "$REPO/scripts/localaws.sh"
DEMO_DAG="${DEMO_DAG:-batch_smoke}"
DEMO_CONF="${DEMO_CONF:-{\}}"

trap stop_endpoint EXIT
start=$(date +%s)
mkdir -p "$AIRFLOW_HOME"
airflow db migrate >"$AIRFLOW_HOME/migrate.log" 2>&1 || { cat "$AIRFLOW_HOME/migrate.log" >&2; exit 1; }
start_endpoint
python -m operators.provisioning apply
echo "running $DEMO_DAG (task logs: $AIRFLOW_HOME/demo-$DEMO_DAG.log)"
status=0
airflow dags test "$DEMO_DAG" --conf "$DEMO_CONF" >"$AIRFLOW_HOME/demo-$DEMO_DAG.log" 2>&1 || status=$?
python -m operators.summary "$DEMO_DAG" --log "$AIRFLOW_HOME/demo-$DEMO_DAG.log"
echo "demo took $(( $(date +%s) - start )) s"
exit $status
