#!/usr/bin/env bash
# make demo: endpoint up, Batch provisioned, the main DAG run once with `airflow dags test` with a
# progress line every few seconds, summary printed.
# Ctrl-C or SIGTERM stops it: the DAG run, then the endpoint, which terminates its running Batch jobs.
set -euo pipefail
source "$REPO/scripts/localaws.sh"
source "$REPO/scripts/sessions.sh"
# The main job: pricing_optimization on 4.2M generated rows of 100,000 units in 3,000 batches, for
# the week ending Monday 2026-02-16 (its window: the 28 days before). Override with DEMO_DAG,
# DEMO_DATE and DEMO_CONF (JSON), e.g. DEMO_DAG=units_of_work DEMO_DATE= make demo.
DEMO_DAG="${DEMO_DAG:-pricing_optimization}"
DEMO_DATE="${DEMO_DATE-2026-02-16}"
DEMO_CONF="${DEMO_CONF:-{\}}"
# `airflow dags test` runs tasks in-process and does not stop on SIGTERM alone.
RUN_GRACE_SECONDS=10
PROGRESS_SECONDS="${DEMO_PROGRESS_SECONDS:-3}"

DAG_RUN_PID=""
PROGRESS_PID=""
stop_progress() {
  [[ -n "$PROGRESS_PID" ]] || return 0
  kill -TERM "$PROGRESS_PID" 2>/dev/null || true
  wait "$PROGRESS_PID" 2>/dev/null || true
  PROGRESS_PID=""
}
cleanup() {
  stop_progress
  [[ -n "$DAG_RUN_PID" ]] && stop_sessions "$RUN_GRACE_SECONDS" "$DAG_RUN_PID"
  stop_endpoint
}
interrupted() {
  trap - INT TERM
  echo "demo interrupted: stopping the DAG run and the local AWS endpoint" >&2
  cleanup
  trap - EXIT
  exit "$1"
}
trap cleanup EXIT
trap 'interrupted 130' INT
trap 'interrupted 143' TERM

start=$(date +%s)
airflow db migrate >"$AIRFLOW_HOME/migrate.log" 2>&1 || { cat "$AIRFLOW_HOME/migrate.log" >&2; exit 1; }
start_endpoint
python -m operators.kit.provisioning apply
log="$AIRFLOW_HOME/demo-$DEMO_DAG.log"
echo "running $DEMO_DAG (task logs: $log)"
# In a session of its own, so that stopping it reaches everything it started; waited for in the
# background, so that Ctrl-C and SIGTERM are handled at once rather than when the run ends.
submitted=$(date +%s)
start_session "$log" airflow dags test "$DEMO_DAG" ${DEMO_DATE:+"$DEMO_DATE"} --conf "$DEMO_CONF"
DAG_RUN_PID=$SESSION_PID
# Progress from the run's log, task instances and done-markers; it ends by itself once the run has
# ended, after a last line.
python -m operators.kit.summary "$DEMO_DAG" --follow "$log" --pid "$DAG_RUN_PID" --since "$submitted" \
  --interval "$PROGRESS_SECONDS" &
PROGRESS_PID=$!
status=0
wait "$DAG_RUN_PID" || status=$?
DAG_RUN_PID=""
wait "$PROGRESS_PID" || true
PROGRESS_PID=""
python -m operators.kit.summary "$DEMO_DAG" --log "$log"
echo "demo took $(( $(date +%s) - start )) s"
exit $status
