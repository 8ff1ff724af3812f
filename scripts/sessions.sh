# Source me: run a command in a session of its own and stop that session as a whole.
# Airflow's task supervisor moves each task into its own process group, so a process group does not
# hold a component's tasks; the session does (a process cannot leave it without setsid).

# start_session LOG COMMAND...: start COMMAND in a new session with stdout/stderr appended to LOG (a
# restarted component keeps its crashed predecessor's log); sets SESSION_PID.
start_session() {
  local log=$1; shift
  setsid "$@" >>"$log" 2>&1 </dev/null &
  SESSION_PID=$!
}

# session_members SID: the live processes of session SID (none for an invalid SID or our own); an
# exited process whose parent is gone can stay a zombie for good where nothing reaps orphans.
session_members() {
  [[ "$1" =~ ^[1-9][0-9]*$ && "$1" != "$(ps -o sid= -p $$ | tr -d ' ')" ]] || return 0
  ps -e -o pid=,sid=,stat= | awk -v sid="$1" '$2 == sid && $3 !~ /^Z/ { print $1 }'
}

# A SIGKILLed process is gone within moments unless the kernel holds it (e.g. blocked on a dead disk).
KILL_WAIT_SECONDS=${KILL_WAIT_SECONDS:-30}

# sessions_gone SECONDS SID...: wait up to SECONDS for every process of each session to be gone; false if
# some are left (their pids in LEFT).
sessions_gone() {
  local sid deadline=$((SECONDS + $1)); shift
  while :; do
    LEFT=""
    for sid in "$@"; do LEFT+=$(session_members "$sid"); done
    [[ -z "$LEFT" ]] && return 0
    (( SECONDS < deadline )) || return 1
    sleep 0.2
  done
}

# stop_sessions GRACE SID...: SIGTERM to every process of each session; SIGKILL to those left after GRACE s;
# returns once they are gone (a killed process can take a while to exit: a restart must not overlap it).
stop_sessions() {
  local grace=$1; shift
  local sid pids
  for sid in "$@"; do
    pids=$(session_members "$sid")
    # SIGCONT after it: a stopped process (SIGSTOP, a debugger gone) handles the SIGTERM too. Bash's kill fails
    # when every pid it is given is gone (they exited since they were listed), and that must not end a caller
    # running under `set -e` (make up's stop): hence `|| true` on each (set -e still applies inside `{ ...; }`).
    if [[ -n "$pids" ]]; then kill -TERM $pids 2>/dev/null || true; kill -CONT $pids 2>/dev/null || true; fi
  done
  sessions_gone "$grace" "$@" && return 0
  for sid in "$@"; do
    pids=$(session_members "$sid")
    if [[ -n "$pids" ]]; then kill -KILL $pids 2>/dev/null || true; fi
  done
  sessions_gone "$KILL_WAIT_SECONDS" "$@" && return 0
  echo "processes of session(s) $* outlived SIGKILL for ${KILL_WAIT_SECONDS} s: $(echo $LEFT)" >&2
  return 0
}
