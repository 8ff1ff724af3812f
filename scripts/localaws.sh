# Source me after scripts/env.sh: start_endpoint / stop_endpoint for the local AWS endpoint.
ENDPOINT_PIDFILE="$AIRFLOW_HOME/localaws.pid"
ENDPOINT_LOG="$AIRFLOW_HOME/localaws.log"

endpoint_is_local() {
  [[ "$AIRFLOW_CONN_AWS_DEFAULT" == *'"endpoint_url": "http://127.0.0.1:'"$LOCALAWS_PORT"'"'* ]]
}

start_endpoint() {
  endpoint_is_local || return 0
  mkdir -p "$AIRFLOW_HOME"
  python -m localaws stop --pidfile "$ENDPOINT_PIDFILE" >/dev/null
  python -m localaws serve --port "$LOCALAWS_PORT" --pidfile "$ENDPOINT_PIDFILE" \
    --exit-with-parent $$ >"$ENDPOINT_LOG" 2>&1 &
  python -m localaws wait --url "http://127.0.0.1:$LOCALAWS_PORT" --timeout 60 || {
    echo "the local AWS endpoint did not start; its log:" >&2; cat "$ENDPOINT_LOG" >&2; return 1; }
  echo "local AWS endpoint: http://127.0.0.1:$LOCALAWS_PORT (log: $ENDPOINT_LOG)"
}

stop_endpoint() {
  endpoint_is_local || return 0
  python -m localaws stop --pidfile "$ENDPOINT_PIDFILE" >/dev/null
}
