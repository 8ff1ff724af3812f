# Source me after scripts/env.sh: start_endpoint / stop_endpoint for the local AWS endpoint.
ENDPOINT_PIDFILE="$AIRFLOW_HOME/localaws.pid"
ENDPOINT_LOG="${ENDPOINT_LOG:-$AIRFLOW_HOME/localaws.log}"
# The endpoint's key pairs, mode 0600; a new pair at each stack start.
ENDPOINT_CREDENTIALS="$AIRFLOW_HOME/localaws-credentials.json"

endpoint_is_local() {
  [[ "$AIRFLOW_CONN_AWS_DEFAULT" == *'"endpoint_url": "http://127.0.0.1:'"$LOCALAWS_PORT"'"'* ]]
}

# A connection that names a loopback endpoint other than the one these scripts start would send
# signed requests to whatever listens there, or fail later with no keys: refuse it at once.
check_endpoint_port() {
  local named
  endpoint_is_local && return 0
  named=$(grep -oE '"endpoint_url": *"https?://(127\.[0-9.]+|localhost|\[::1\]):[0-9]+' <<<"$AIRFLOW_CONN_AWS_DEFAULT" \
    | grep -oE '[0-9]+$') || return 0
  echo "AIRFLOW_CONN_AWS_DEFAULT names a local endpoint on port $named, but the endpoint these scripts start listens on" \
    "LOCALAWS_PORT=$LOCALAWS_PORT. Set only LOCALAWS_PORT (unset AIRFLOW_CONN_AWS_DEFAULT): everything follows it." >&2
  return 1
}

endpoint_port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$LOCALAWS_PORT") 2>/dev/null
}

# Starts the endpoint (which provisions Batch from config/batch_resources.json) and points
# aws_default at it with its new client keys, for everything started after it.
start_endpoint() {
  check_endpoint_port || return 1
  endpoint_is_local || return 0
  mkdir -p "$AIRFLOW_HOME"
  python -m localaws stop --pidfile "$ENDPOINT_PIDFILE" >/dev/null
  if endpoint_port_in_use; then
    echo "port $LOCALAWS_PORT on 127.0.0.1 is in use by another program (another checkout's endpoint?): stop it, or" \
      "run with LOCALAWS_PORT=<a free port>" >&2
    return 1
  fi
  rm -f "$ENDPOINT_CREDENTIALS"
  python -m localaws serve --port "$LOCALAWS_PORT" --credentials "$ENDPOINT_CREDENTIALS" \
    --pidfile "$ENDPOINT_PIDFILE" --exit-with-parent $$ >"$ENDPOINT_LOG" 2>&1 &
  python -m localaws wait --url "http://127.0.0.1:$LOCALAWS_PORT" --timeout 120 || {
    echo "the local AWS endpoint did not start; its log:" >&2; cat "$ENDPOINT_LOG" >&2; return 1; }
  AIRFLOW_CONN_AWS_DEFAULT="$(python -m localaws connection --credentials "$ENDPOINT_CREDENTIALS" \
    --url "http://127.0.0.1:$LOCALAWS_PORT")" || return 1
  export AIRFLOW_CONN_AWS_DEFAULT
  echo "local AWS endpoint: http://127.0.0.1:$LOCALAWS_PORT (log: $ENDPOINT_LOG, credentials: $ENDPOINT_CREDENTIALS)"
}

stop_endpoint() {
  endpoint_is_local || return 0
  python -m localaws stop --pidfile "$ENDPOINT_PIDFILE" >/dev/null
}
