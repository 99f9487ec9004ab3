{{/*
The role reconciler's scripts (ConfigMap <release>-postgres-roles), also
hashed into the PostgreSQL pod's annotations so that a changed script
restarts the pod and runs. deploy/ runs reconcile-roles.sh as rendered
against a real PostgreSQL.
*/}}
{{- define "switchyard.rolesScripts" -}}
reconcile-roles.sh: |
  #!/bin/bash
  # Connects with the libpq environment (PGHOST, PGPORT, PGUSER): in the
  # pod, the server's Unix socket, where the superuser needs no password
  # (so a superuser password that no longer matches its Secret is
  # repaired too). Reads each password from $SWITCHYARD_SECRETS_DIR/<role>/password.
  set -euo pipefail
  dir="${SWITCHYARD_SECRETS_DIR:-/secrets}"
  password() {
    local f="$dir/$1/password"
    if [ ! -s "$f" ]; then echo "reconcile-roles: no password in $f" >&2; return 1; fi
    cat "$f"
  }
  sql() { psql -X -q -v ON_ERROR_STOP=1 --dbname postgres "$@"; }

  pw=$(password admin)
  sql -v pw="$pw" <<'SQL'
  ALTER ROLE CURRENT_USER PASSWORD :'pw';
  SQL
  for role in {{ include "switchyard.serviceNames" . }}; do
    pw=$(password "$role")
    # CREATE ROLE and CREATE DATABASE have no IF NOT EXISTS: \gexec runs
    # the generated statement only when the object is missing; every
    # other statement simply sets the wanted state again.
    sql -v role="$role" -v pw="$pw" <<'SQL'
  SELECT format('CREATE ROLE %I', :'role') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')
  \gexec
  ALTER ROLE :"role" WITH LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS PASSWORD :'pw';
  SELECT format('CREATE DATABASE %I OWNER %I', :'role', :'role') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'role')
  \gexec
  ALTER DATABASE :"role" OWNER TO :"role";
  REVOKE ALL ON DATABASE :"role" FROM PUBLIC;
  GRANT ALL ON DATABASE :"role" TO :"role";
  SQL
    echo "reconcile-roles: $role ok"
  done
watch-roles.sh: |
  #!/bin/bash
  # Runs reconcile-roles.sh once the server accepts connections, then
  # again whenever the mounted Secrets change (the kubelet updates them in
  # place, within a minute or so). /tmp/reconciled marks success: the
  # container is ready only then, so the PostgreSQL Service has no
  # endpoint before the roles match the Secrets.
  set -uo pipefail
  last=""
  while true; do
    sum=$(cat /secrets/*/password | sha256sum)
    if [ "$sum" != "$last" ] && pg_isready -q; then
      if bash /scripts/reconcile-roles.sh; then
        last=$sum
        touch /tmp/reconciled
      else
        rm -f /tmp/reconciled
        echo "watch-roles: reconcile failed; retrying" >&2
      fi
    fi
    sleep 5
  done
{{- end -}}
