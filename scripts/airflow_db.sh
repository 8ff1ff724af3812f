# Source me after scripts/env.sh: migrate the Airflow metadata DB only when it needs it.
# `airflow db migrate` takes seconds of CPU even when there is nothing to do (it imports all of Airflow):
# make up and make demo skip it when the DB is at the revision this Airflow release left it at last time.
MIGRATED_STAMP="$AIRFLOW_HOME/migrated.stamp"

# The DB's schema revision, this Airflow's release and a digest of the DB's URL (never the URL: it can hold
# a password); empty when there is no migrated DB yet.
db_revision() {
  python - <<'PY'
import hashlib, importlib.metadata, os
import sqlalchemy
url = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
if not url.startswith("sqlite:///") or os.path.isfile(url.removeprefix("sqlite:///")):
    try:
        with sqlalchemy.create_engine(url).connect() as db:
            revision = db.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar()
    except Exception:  # no DB, no table, no driver: migrate
        revision = None
    if revision:
        print(f"{importlib.metadata.version('apache-airflow')} {revision} {hashlib.sha256(url.encode()).hexdigest()[:16]}")
PY
}

# migration_needed: true unless the DB is at the revision recorded after the last migrate of this release.
migration_needed() {
  local revision
  revision=$(db_revision)
  [[ -z "$revision" || ! -f "$MIGRATED_STAMP" || "$(cat "$MIGRATED_STAMP")" != "$revision" ]]
}

# record_migration: after a successful `airflow db migrate`, the revision it left the DB at.
record_migration() {
  db_revision >"$MIGRATED_STAMP"
}
