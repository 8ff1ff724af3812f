#!/usr/bin/env bash
# make up: the local metadata DB (PostgreSQL, localdb/), the local AWS endpoint, and Airflow's
# api-server, scheduler, dag-processor and triggerer (LocalExecutor); the web UI at
# $AIRFLOW__API__BASE_URL. Ctrl-C or SIGTERM (to this script, its process group or its shell) stops
# all of it within STOP_GRACE_SECONDS and a few more.
#
# Each component runs in a session of its own, recorded in $AIRFLOW_HOME/stack.pids with the pid
# of this script: stopping a session reaches the LocalExecutor workers and the task processes too,
# and a later `make up` finds what an earlier one left behind.
set -euo pipefail
API="${AIRFLOW__API__BASE_URL%/}"
STACK_FILE="$AIRFLOW_HOME/stack.pids"
# Each start's logs in a folder of their own (a crash's logs survive the restart); `latest` names the newest.
LOG_ROOT="$AIRFLOW_HOME/logs/up"
COMPONENT_LOGS="$LOG_ROOT/$(date -u +%Y%m%dT%H%M%SZ)-$$"
KEEP_LOG_FOLDERS=10
export ENDPOINT_LOG="$COMPONENT_LOGS/localaws.log"
source "$REPO/scripts/localaws.sh"
source "$REPO/scripts/sessions.sh"
source "$REPO/scripts/airflow_db.sh"
# Airflow's components get SIGTERM first, SIGKILL after this: the whole stop stays within 30 s.
STOP_GRACE_SECONDS=20
READY_TIMEOUT_SECONDS=360
# A task killed by a stop or a restart of the stack (its process gone with the scheduler that ran it)
# runs again rather than failing its run: one retry for tasks that set none, ten seconds later (a
# shard's retry resumes the Batch job it submitted). `airflow dags test` (make demo, the tests) keeps none.
export AIRFLOW__CORE__DEFAULT_TASK_RETRIES="${AIRFLOW__CORE__DEFAULT_TASK_RETRIES:-1}"
export AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY="${AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY:-10}"
# An idle stack stays quiet (docs/performance.md, "The always-on stack"): the dag-processor re-parses
# each DAG file every 5 minutes rather than every 30 s (that alone took 8% of a core here), as often as
# it looks for new files ([dag_processor] refresh_interval): a DAG change shows within 5 minutes, at once
# with `airflow dags reserialize` or the UI's "Reparse Dag" button. An idle scheduler looks for work every
# 2 s rather than every second; the components' heartbeats come every 10 s rather than 5 (the health
# check's thresholds are 30 s and more), and the dag-processor asks whether its bundle changed every 30 s.
export AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL="${AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL:-300}"
export AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL="${AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL:-30}"
export AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME="${AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME:-2}"
export AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="${AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC:-10}"
export AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC="${AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC:-10}"
# The watchdog: the health endpoint is read every WATCH_SECONDS; a component found unhealthy
# STALE_CHECKS times in a row while its process lives is restarted, at most MAX_RESTARTS times.
WATCH_SECONDS="${UP_WATCH_SECONDS:-20}"
STALE_CHECKS="${UP_STALE_CHECKS:-3}"
MAX_RESTARTS="${UP_MAX_RESTARTS:-3}"
# The log servers of the scheduler and the triggerer listen on every interface, with no setting to
# change that; the api-server reads task logs from $AIRFLOW_HOME/logs on this machine, so they stay off.
declare -A COMMANDS=(
  [api-server]="airflow api-server"
  [scheduler]="airflow scheduler --skip-serve-logs"
  [dag-processor]="airflow dag-processor"
  [triggerer]="airflow triggerer --skip-serve-logs"
)
declare -A SESSIONS=()

fail() { echo "make up: $*" >&2; exit 1; }

alive() {  # alive PID: running (a child that exited stays a zombie until waited for)
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) && [[ "$state" != Z* ]]
}

owner_of_this_home() {  # owner_of_this_home PID: a make up started with this AIRFLOW_HOME
  tr '\0' '\n' <"/proc/$1/environ" 2>/dev/null | grep -qxF "AIRFLOW_HOME=$AIRFLOW_HOME"
}

component_of_this_home() {  # component_of_this_home PID: writes to one of this home's Airflow component logs
  # (Airflow's processes rename themselves with setproctitle, which overwrites their environment). The
  # database and the endpoint log into the same folders, and are stopped their own way, after Airflow.
  local out
  out=$(readlink "/proc/$1/fd/1" 2>/dev/null) || return 1
  [[ "$out" == "$LOG_ROOT/"*.log ]] || return 1
  out=${out##*/}
  [[ -n "${COMMANDS[${out%.log}]+set}" ]]
}

stop_previous_stack() {
  [[ -f "$STACK_FILE" ]] || return 0
  local owner name sid pid leftovers=()
  owner=$(awk '$1 == "owner" { print $2 }' "$STACK_FILE")
  if [[ -n "$owner" ]] && alive "$owner" && owner_of_this_home "$owner"; then
    fail "a local stack is already running for $AIRFLOW_HOME (make up, pid $owner).
Stop it with Ctrl-C in its terminal or 'kill $owner', or give this one another AIRFLOW_HOME and AIRFLOW__API__PORT."
  fi
  while read -r name sid; do
    [[ "$name" == owner ]] && continue
    for pid in $(session_members "$sid"); do
      if component_of_this_home "$pid"; then leftovers+=("$sid"); echo "stopping the $name a previous make up left running (session $sid)"; break; fi
    done
  done <"$STACK_FILE"
  (( ${#leftovers[@]} )) && stop_sessions "$STOP_GRACE_SECONDS" "${leftovers[@]}"
  rm -f "$STACK_FILE"
}

port_in_use() {
  (exec 3<>"/dev/tcp/${AIRFLOW__API__HOST:-127.0.0.1}/$AIRFLOW__API__PORT") 2>/dev/null
}

# Set once this make up owns the home (it wrote itself into the stack file): only then does its stop
# stop anything. One that refused to start (a stack already runs for this home, the port is taken)
# leaves that stack's components, its endpoint and its database alone.
OWNS_HOME=0

cleanup() {
  # A second signal, or a terminal that went away, must not cut the stop short.
  trap '' INT TERM HUP PIPE
  (( OWNS_HOME )) || return 0
  if (( ${#SESSIONS[@]} )); then
    echo "stopping Airflow (${!SESSIONS[*]})" 2>/dev/null || true
    stop_sessions "$STOP_GRACE_SECONDS" "${SESSIONS[@]}"
    # A component started in the instant the stop began (a watchdog's restart) is in no recorded session
    # yet: any process still writing to this home's component logs is stopped with its session.
    local pid sid stray=()
    for pid in $(ps -e -o pid=); do
      component_of_this_home "$pid" && sid=$(ps -o sid= -p "$pid") && stray+=("${sid// /}")
    done
    (( ${#stray[@]} )) && stop_sessions "$STOP_GRACE_SECONDS" $(printf '%s\n' "${stray[@]}" | sort -u)
  fi
  stop_endpoint || true
  python -m localdb stop >/dev/null 2>&1 || true
  [[ -f "$STACK_FILE" ]] && awk -v me="$$" '$1 == "owner" && $2 == me { found = 1 } END { exit !found }' "$STACK_FILE" \
    && rm -f "$STACK_FILE"
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Which components are not healthy yet: /api/v2/monitor/health as JSON, each component "healthy"
# with a heartbeat from after $1 (a component of a stack stopped a moment ago still looks alive).
unhealthy_components() {
  local health
  health=$(curl -fsS --max-time 10 "$API/api/v2/monitor/health" 2>/dev/null) || { echo api-server; return 0; }
  python -I -S -c '
import json, sys
from datetime import datetime
since = datetime.fromisoformat(sys.argv[1])
try:
    health = json.load(sys.stdin)
except ValueError:
    health = {}
heartbeat = {"scheduler": "latest_scheduler_heartbeat", "triggerer": "latest_triggerer_heartbeat",
             "dag_processor": "latest_dag_processor_heartbeat"}
waiting = []
for name in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
    info = health.get(name) or {}
    beat = info.get(heartbeat.get(name, ""))
    if info.get("status") != "healthy" or (name in heartbeat and not (beat and datetime.fromisoformat(beat) > since)):
        waiting.append(name.replace("_", "-"))
print(" ".join(waiting))' "$1" <<<"$health"
}

# The execution API answers a real request (the first one builds its versioned routes, which took
# over half a minute under load): only then may the scheduler hand it tasks.
execution_api_answers() {
  curl -fsS --max-time 60 -o /dev/null "$API/execution/health/ping" 2>/dev/null
}

# A component started so far that has exited already is named, with its log's last lines, and stops the start:
# the dag-processor, started beside the api-server, is checked while the api-server is still starting too.
check_started_components() {
  local name
  for name in "${!SESSIONS[@]}"; do
    alive "${SESSIONS[$name]}" || { tail -n 40 "$COMPONENT_LOGS/$name.log" >&2
      fail "Airflow's $name exited while starting (its log, above: $COMPONENT_LOGS/$name.log)"; }
  done
}

start_component() {  # start_component NAME: in a session of its own, recorded in the stack file
  local name=$1
  # shellcheck disable=SC2086  # the command is words by design
  start_session "$COMPONENT_LOGS/$name.log" ${COMMANDS[$name]}
  SESSIONS[$name]=$SESSION_PID
  echo "$name $SESSION_PID" >>"$STACK_FILE"
}

restart_component() {  # restart_component NAME WHY
  local name=$1 why=$2
  RESTARTS[$name]=$(( ${RESTARTS[$name]:-0} + 1 ))
  if (( RESTARTS[$name] > MAX_RESTARTS )); then
    fail "Airflow's $name $why, again after $MAX_RESTARTS restarts: stopping the stack (log: $COMPONENT_LOGS/$name.log)"
  fi
  echo "make up: Airflow's $name $why: restarting it ($(( RESTARTS[$name] )) of $MAX_RESTARTS; log: $COMPONENT_LOGS/$name.log)" >&2
  stop_sessions "$STOP_GRACE_SECONDS" "${SESSIONS[$name]}"
  start_component "$name"
}

stop_previous_stack
port_in_use && fail "port $AIRFLOW__API__PORT on ${AIRFLOW__API__HOST:-127.0.0.1} is in use by another program: stop it, or run
AIRFLOW__API__PORT=<a free port> make up"
command -v airflow >/dev/null || fail "airflow is not on PATH: run make up, which activates .venv"
check_endpoint_port || exit 1

mkdir -p "$COMPONENT_LOGS"
ln -sfn "$(basename "$COMPONENT_LOGS")" "$LOG_ROOT/latest"
# Older starts' logs beyond the last KEEP_LOG_FOLDERS go.
ls -1d "$LOG_ROOT"/*Z-* 2>/dev/null | sort | head -n "-$KEEP_LOG_FOLDERS" | xargs -r rm -rf
echo "owner $$" >"$STACK_FILE"
OWNS_HOME=1
python -m localdb start --log "$COMPONENT_LOGS/postgres.log" || fail "the local database did not start (log: $COMPONENT_LOGS/postgres.log)"
# Migrated only when the DB needs it: a new home, or a new Airflow release (scripts/airflow_db.sh).
if migration_needed; then
  airflow db migrate >"$COMPONENT_LOGS/migrate.log" 2>&1 || { cat "$COMPONENT_LOGS/migrate.log" >&2; fail "airflow db migrate failed"; }
  record_migration
else
  echo "metadata DB: at this Airflow's revision, not migrated ($(cut -d' ' -f1-2 "$MIGRATED_STAMP"))"
fi
start_endpoint
# The local endpoint provisions Batch from config/batch_resources.json as it starts; another endpoint
# (AWS itself) is provisioned here.
endpoint_is_local || python -m operators.kit.provisioning apply

started_at=$(date -u +%Y-%m-%dT%H:%M:%S+00:00)
declare -A RESTARTS=()
start_component api-server
start_component dag-processor
echo "waiting for Airflow at $API (logs: $COMPONENT_LOGS/)"
deadline=$((SECONDS + READY_TIMEOUT_SECONDS))
until execution_api_answers; do
  check_started_components
  (( SECONDS < deadline )) || fail "the execution API did not answer within $READY_TIMEOUT_SECONDS s (log: $COMPONENT_LOGS/api-server.log)"
  sleep 1
done
start_component scheduler
start_component triggerer

# A run queued before every component answers fails its first task, so report ready only then.
while :; do
  check_started_components
  waiting=$(unhealthy_components "$started_at")
  [[ -z "$waiting" ]] && break
  (( SECONDS < deadline )) || fail "not healthy after $READY_TIMEOUT_SECONDS s: $waiting (logs: $COMPONENT_LOGS/)"
  sleep 2
done
echo "Airflow is ready at $API"
echo "user: admin, password: in $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"

# Running until Ctrl-C or SIGTERM. A component that exits (killed, crashed), or whose heartbeat goes
# stale while its process lives (or an api-server that stops answering), is named and restarted; one
# that needs more than MAX_RESTARTS restarts takes the stack down with it.
declare -A STALE=()
while :; do
  sleep "$WATCH_SECONDS" &
  wait "$!" || true
  for name in "${!SESSIONS[@]}"; do
    alive "${SESSIONS[$name]}" || restart_component "$name" "exited (see $COMPONENT_LOGS/$name.log)"
  done
  waiting=" $(unhealthy_components "$(date -u -d "-60 seconds" +%Y-%m-%dT%H:%M:%S+00:00)") "
  for name in api-server scheduler triggerer dag-processor; do
    if [[ "$waiting" == *" $name "* ]]; then STALE[$name]=$(( ${STALE[$name]:-0} + 1 )); else STALE[$name]=0; fi
  done
  if (( STALE[api-server] >= STALE_CHECKS )); then
    restart_component api-server "has not answered for $(( STALE_CHECKS * WATCH_SECONDS )) s while its process lives"
    STALE=()
    continue
  fi
  (( STALE[api-server] )) && continue  # the others' health is read through it
  for name in scheduler triggerer dag-processor; do
    if (( STALE[$name] >= STALE_CHECKS )); then
      restart_component "$name" "has no fresh heartbeat (health: unhealthy $(( STALE_CHECKS * WATCH_SECONDS )) s) while its process lives"
      STALE[$name]=0
    fi
  done
done
