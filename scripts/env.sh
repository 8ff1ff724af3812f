# Source me: exports config/local.env (with ${REPO} set), activates .venv. Values already in the
# environment win, so production settings can be given from outside.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO
while IFS= read -r line || [[ -n "$line" ]]; do
  [[ -z "$line" || "$line" == \#* ]] && continue
  key="${line%%=*}"
  value="${line#*=}"
  if [[ -z "${!key+x}" ]]; then
    value="${value//\$\{REPO\}/$REPO}"
    # Values may name a setting above them (the endpoint's URL follows LOCALAWS_PORT alone).
    export "$key=${value//\$\{LOCALAWS_PORT\}/$LOCALAWS_PORT}"
  fi
done < "$REPO/config/local.env"

# The metadata DB: the PostgreSQL of this AIRFLOW_HOME on its private socket (localdb/), unless given.
if [[ -z "${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-}" ]]; then
  AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="$(PYTHONPATH="$REPO" python3 -m localdb --home "$AIRFLOW_HOME" url)"
  export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN
fi

# Every URL of the local stack follows [api] host and port: tasks reach the api-server at the
# execution API URL, which Airflow would otherwise leave at localhost:8080 whatever the port.
api_host="${AIRFLOW__API__HOST:-127.0.0.1}"
case "$api_host" in 0.0.0.0|::|"") api_host=127.0.0.1 ;; esac
[[ "$api_host" == *:* ]] && api_host="[$api_host]"
export AIRFLOW__API__BASE_URL="${AIRFLOW__API__BASE_URL:-http://$api_host:${AIRFLOW__API__PORT:-8080}}"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="${AIRFLOW__CORE__EXECUTION_API_SERVER_URL:-${AIRFLOW__API__BASE_URL%/}/execution/}"
unset api_host

# Local state holds the UI password, the metadata DB, task logs, the endpoint's credentials and the
# data: private to the user. Everything started from here creates files without group/other bits.
umask 077
keep_private() {  # keep_private DIR...: create each local folder 0700 and strip group/other bits inside
  local dir
  for dir in "$@"; do
    [[ -z "$dir" || "$dir" == *://* ]] && continue
    mkdir -p "$dir"
    chmod -R go-rwx "$dir"
  done
}
keep_private "$AIRFLOW_HOME" "$DATA_ROOT"

if [[ -f "$REPO/.venv/bin/activate" ]]; then
  # shellcheck disable=SC1091
  . "$REPO/.venv/bin/activate"
fi
