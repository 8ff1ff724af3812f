# Source me: exports config/local.env (with ${REPO} set), activates .venv. Values already in the
# environment win, so production settings can be given from outside.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO
while IFS= read -r line || [[ -n "$line" ]]; do
  [[ -z "$line" || "$line" == \#* ]] && continue
  key="${line%%=*}"
  value="${line#*=}"
  if [[ -z "${!key+x}" ]]; then
    export "$key=${value//\$\{REPO\}/$REPO}"
  fi
done < "$REPO/config/local.env"
if [[ -f "$REPO/.venv/bin/activate" ]]; then
  # shellcheck disable=SC1091
  . "$REPO/.venv/bin/activate"
fi
