#!/usr/bin/env bash
# make demo: endpoint up, Batch provisioned, the main DAG run once with `airflow dags test`, summary printed.
set -euo pipefail
source "$REPO/scripts/localaws.sh"
# The main job: pricing_optimization on 4.2M generated rows of 100,000 units in 3,000 batches, for
# the week ending Monday 2026-02-16 (its window: the 28 days before). Override with DEMO_DAG,
# DEMO_DATE and DEMO_CONF (JSON), e.g. DEMO_DAG=units_of_work DEMO_DATE= make demo.
DEMO_DAG="${DEMO_DAG:-pricing_optimization}"
DEMO_DATE="${DEMO_DATE-2026-02-16}"
DEMO_CONF="${DEMO_CONF:-{\}}"

trap stop_endpoint EXIT
start=$(date +%s)
mkdir -p "$AIRFLOW_HOME"
airflow db migrate >"$AIRFLOW_HOME/migrate.log" 2>&1 || { cat "$AIRFLOW_HOME/migrate.log" >&2; exit 1; }
start_endpoint
python -m operators.provisioning apply
echo "running $DEMO_DAG (task logs: $AIRFLOW_HOME/demo-$DEMO_DAG.log)"
status=0
airflow dags test "$DEMO_DAG" ${DEMO_DATE:+"$DEMO_DATE"} --conf "$DEMO_CONF" >"$AIRFLOW_HOME/demo-$DEMO_DAG.log" 2>&1 || status=$?
python -m operators.summary "$DEMO_DAG" --log "$AIRFLOW_HOME/demo-$DEMO_DAG.log"
echo "demo took $(( $(date +%s) - start )) s"
exit $status
