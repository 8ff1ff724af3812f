#!/usr/bin/env bash
# make demo: endpoint up, Batch provisioned, the main DAG run once with `airflow dags test` with a
# progress line every few seconds, summary printed.
# Ctrl-C or SIGTERM stops it: the DAG run, then the endpoint, which terminates its running Batch jobs.
set -euo pipefail
source "$REPO/scripts/localaws.sh"
source "$REPO/scripts/sessions.sh"
source "$REPO/scripts/airflow_db.sh"
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
MIGRATE_PID=""
stop_progress() {
  [[ -n "$PROGRESS_PID" ]] || return 0
  kill -TERM "$PROGRESS_PID" 2>/dev/null || true
  wait "$PROGRESS_PID" 2>/dev/null || true
  PROGRESS_PID=""
}
STARTED_DB=""
cleanup() {
  [[ -n "$MIGRATE_PID" ]] && { kill -TERM "$MIGRATE_PID" 2>/dev/null || true; wait "$MIGRATE_PID" 2>/dev/null || true; MIGRATE_PID=""; }
  stop_progress
  [[ -n "$DAG_RUN_PID" ]] && stop_sessions "$RUN_GRACE_SECONDS" "$DAG_RUN_PID"
  stop_endpoint
  [[ -n "$STARTED_DB" ]] && python -m localdb stop >/dev/null
  return 0
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
# The local metadata DB (localdb/): started here unless make up runs it; stopped again at the end if so.
if [[ "$AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" == "$(python -m localdb url)" ]] && ! python -m localdb status >/dev/null; then
  python -m localdb start >/dev/null || exit 1
  STARTED_DB=1
fi
# Migrated only when the DB needs it (scripts/airflow_db.sh), while the endpoint starts.
if migration_needed; then
  airflow db migrate >"$AIRFLOW_HOME/migrate.log" 2>&1 &
  MIGRATE_PID=$!
fi
start_endpoint
if [[ -n "$MIGRATE_PID" ]]; then
  wait "$MIGRATE_PID" || { MIGRATE_PID=""; cat "$AIRFLOW_HOME/migrate.log" >&2; exit 1; }
  MIGRATE_PID=""
  record_migration
fi
# The local endpoint provisions Batch from config/batch_resources.json as it starts; another endpoint
# (AWS itself) is provisioned here.
endpoint_is_local || python -m operators.kit.provisioning apply
log="$AIRFLOW_HOME/demo-$DEMO_DAG.log"
echo "running $DEMO_DAG (task logs: $log)"
# In a session of its own, so that stopping it reaches everything it started; waited for in the
# background, so that Ctrl-C and SIGTERM are handled at once rather than when the run ends.
submitted=$(date +%s)
# Parsing only the DAG's own file (when it is dags/<dag id>.py) spares the command a parse and write of
# every DAG before the one that dag.test() itself does.
dag_file=()
[[ -f "$REPO/dags/$DEMO_DAG.py" ]] && dag_file=(--bundle-name dags-folder --dagfile-path "$REPO/dags/$DEMO_DAG.py")
: >"$log"  # this run's log alone: the progress follower reads it
start_session "$log" airflow dags test "$DEMO_DAG" ${DEMO_DATE:+"$DEMO_DATE"} --conf "$DEMO_CONF" "${dag_file[@]}"
DAG_RUN_PID=$SESSION_PID
# Progress from the run's log, task instances and done-markers; once the run has ended, a last line
# and the run's summary (the same process: one Airflow start-up for both).
python -m operators.kit.summary "$DEMO_DAG" --follow "$log" --pid "$DAG_RUN_PID" --since "$submitted" \
  --interval "$PROGRESS_SECONDS" --report --log "$log" &
PROGRESS_PID=$!
status=0
wait "$DAG_RUN_PID" || status=$?
DAG_RUN_PID=""
wait "$PROGRESS_PID" || true
PROGRESS_PID=""
echo "demo took $(( $(date +%s) - start )) s"
exit $status
