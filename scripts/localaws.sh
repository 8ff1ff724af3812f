# Source me after scripts/env.sh: start_endpoint / stop_endpoint for the local AWS endpoint.
ENDPOINT_PIDFILE="$AIRFLOW_HOME/localaws.pid"
ENDPOINT_LOG="$AIRFLOW_HOME/localaws.log"
# The endpoint's key pairs, mode 0600; a new pair at each stack start.
ENDPOINT_CREDENTIALS="$AIRFLOW_HOME/localaws-credentials.json"

endpoint_is_local() {
  [[ "$AIRFLOW_CONN_AWS_DEFAULT" == *'"endpoint_url": "http://127.0.0.1:'"$LOCALAWS_PORT"'"'* ]]
}

# Starts the endpoint (which provisions Batch from config/batch_resources.json) and points
# aws_default at it with its new client keys, for everything started after it.
start_endpoint() {
  endpoint_is_local || return 0
  mkdir -p "$AIRFLOW_HOME"
  python -m localaws stop --pidfile "$ENDPOINT_PIDFILE" >/dev/null
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
