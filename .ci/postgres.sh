#!/usr/bin/env bash
# Install (Debian's packages) and start a PostgreSQL server on loopback for the tests;
# prints the URL of a role that may create and drop its own databases.
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
bin=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -n 1)")
data=/tmp/purestep-pg
port=55432
if [ ! -f "$data/PG_VERSION" ]; then
    install -d -o postgres -g postgres "$data"
    su postgres -c "$bin/initdb -D $data -A scram-sha-256 --username=postgres --pwfile=<(echo postgres)" >&2
fi
if ! su postgres -c "$bin/pg_ctl -D $data status" >/dev/null 2>&1; then
    su postgres -c "$bin/pg_ctl -D $data -l $data/server.log -w -o '-h 127.0.0.1 -p $port -k /tmp' start" >&2
fi
PGPASSWORD=postgres psql -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 >&2 <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'purestep') THEN
    CREATE ROLE purestep LOGIN CREATEDB PASSWORD 'purestep';
  END IF;
END \$\$;
SQL
echo "postgresql://purestep:purestep@127.0.0.1:$port/postgres"
