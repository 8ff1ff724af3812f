#!/usr/bin/env bash
# make up: the local AWS endpoint plus Airflow's api-server, scheduler, dag-processor and triggerer
# (LocalExecutor, SQLite); the web UI at $AIRFLOW__API__BASE_URL. Ctrl-C or SIGTERM stops all of it.
#
# Each component runs in a session of its own, recorded in $AIRFLOW_HOME/stack.pids with the pid
# of this script: stopping a session reaches the LocalExecutor workers and the task processes too,
# and a later `make up` finds what an earlier one left behind.
set -euo pipefail
source "$REPO/scripts/localaws.sh"
source "$REPO/scripts/sessions.sh"
API="${AIRFLOW__API__BASE_URL%/}"
STACK_FILE="$AIRFLOW_HOME/stack.pids"
COMPONENT_LOGS="$AIRFLOW_HOME/logs/up"
STOP_GRACE_SECONDS=30
READY_TIMEOUT_SECONDS=360
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

component_of_this_home() {  # component_of_this_home PID: writes to this home's component logs
  # (Airflow's processes rename themselves with setproctitle, which overwrites their environment.)
  [[ "$(readlink "/proc/$1/fd/1" 2>/dev/null)" == "$COMPONENT_LOGS/"* ]]
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

cleanup() {
  trap - INT TERM
  if (( ${#SESSIONS[@]} )); then
    echo "stopping Airflow (${!SESSIONS[*]})"
    stop_sessions "$STOP_GRACE_SECONDS" "${SESSIONS[@]}"
  fi
  stop_endpoint
  [[ -f "$STACK_FILE" ]] && awk -v me="$$" '$1 == "owner" && $2 == me { found = 1 } END { exit !found }' "$STACK_FILE" \
    && rm -f "$STACK_FILE"
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Which components are not healthy yet: /api/v2/monitor/health as JSON, each component "healthy"
# with a heartbeat from after $1 (a component of a stack stopped a moment ago still looks alive).
unhealthy_components() {
  local health
  health=$(curl -fsS --max-time 10 "$API/api/v2/monitor/health" 2>/dev/null) || { echo api-server; return 0; }
  python -c '
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

stop_previous_stack
port_in_use && fail "port $AIRFLOW__API__PORT on ${AIRFLOW__API__HOST:-127.0.0.1} is in use by another program: stop it, or run
AIRFLOW__API__PORT=<a free port> make up"
command -v airflow >/dev/null || fail "airflow is not on PATH: run make up, which activates .venv"

mkdir -p "$COMPONENT_LOGS"
airflow db migrate >"$COMPONENT_LOGS/migrate.log" 2>&1 || { cat "$COMPONENT_LOGS/migrate.log" >&2; fail "airflow db migrate failed"; }
start_endpoint
python -m operators.kit.provisioning apply

started_at=$(date -u +%Y-%m-%dT%H:%M:%S+00:00)
echo "owner $$" >"$STACK_FILE"
for name in api-server scheduler dag-processor triggerer; do
  # shellcheck disable=SC2086  # the command is words by design
  start_session "$COMPONENT_LOGS/$name.log" ${COMMANDS[$name]}
  SESSIONS[$name]=$SESSION_PID
  echo "$name $SESSION_PID" >>"$STACK_FILE"
done
echo "waiting for Airflow at $API (logs: $COMPONENT_LOGS/)"

# A run queued before every component answers fails its first task, so report ready only then.
deadline=$((SECONDS + READY_TIMEOUT_SECONDS))
while :; do
  for name in "${!SESSIONS[@]}"; do
    alive "${SESSIONS[$name]}" || { tail -n 40 "$COMPONENT_LOGS/$name.log" >&2
      fail "Airflow's $name exited while starting (its log, above: $COMPONENT_LOGS/$name.log)"; }
  done
  waiting=$(unhealthy_components "$started_at")
  [[ -z "$waiting" ]] && break
  (( SECONDS < deadline )) || fail "not healthy after $READY_TIMEOUT_SECONDS s: $waiting (logs: $COMPONENT_LOGS/)"
  sleep 2
done
echo "Airflow is ready at $API"
echo "user: admin, password: in $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"

# Running until Ctrl-C or SIGTERM; a component that stops on its own takes the stack down with it.
status=0
wait -n "${SESSIONS[@]}" || status=$?
for name in "${!SESSIONS[@]}"; do
  alive "${SESSIONS[$name]}" || fail "Airflow's $name exited ($status): see $COMPONENT_LOGS/$name.log; stopping the rest"
done
exit "$status"
