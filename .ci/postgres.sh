#!/usr/bin/env bash
# Start a throwaway PostgreSQL for the store tests and print the line that points them at it:
#     eval "$(.ci/postgres.sh)"
# For a Debian machine, run as root. Idempotent: a second run reuses the running server.
# Only the export line goes to stdout; progress goes to stderr.
set -euo pipefail

STATE_DIR="${CDS_PG_STATE_DIR:-/tmp/mtor-cds-postgres}"
DATABASE="mtor_cds_test"
FIRST_PORT="${CDS_PG_PORT:-55432}"

say() { echo "postgres.sh: $*" >&2; }

find_bin_dir() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

BIN_DIR="$(find_bin_dir)"
if [[ -z "$BIN_DIR" || ! -x "$BIN_DIR/initdb" || ! -x "$BIN_DIR/pg_ctl" ]]; then
    say "installing postgresql"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2
    apt-get install -y postgresql >&2
    BIN_DIR="$(find_bin_dir)"
fi
id postgres >/dev/null 2>&1 || useradd --system --home-dir "$STATE_DIR" postgres

as_postgres() { runuser -u postgres -- "$@"; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

print_url() {
    echo "export CDS_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$1/$DATABASE"
}

# Already running from an earlier call: reuse it.
if [[ -f "$STATE_DIR/port" ]] && as_postgres "$BIN_DIR/pg_ctl" -D "$STATE_DIR/data" status >/dev/null 2>&1; then
    port="$(cat "$STATE_DIR/port")"
    say "reusing the server on port $port"
    print_url "$port"
    exit 0
fi

# Anything left over is stale: start afresh.
if [[ -d "$STATE_DIR/data" ]]; then
    as_postgres "$BIN_DIR/pg_ctl" -D "$STATE_DIR/data" stop -m immediate >/dev/null 2>&1 || true
fi
rm -rf "$STATE_DIR"
mkdir -p "$STATE_DIR"
chown postgres: "$STATE_DIR"
chmod 700 "$STATE_DIR"

port="$FIRST_PORT"
while port_in_use "$port"; do
    port=$((port + 1))
    if ((port > FIRST_PORT + 100)); then
        say "no free port from $FIRST_PORT to $port"
        exit 1
    fi
done

say "initialising a cluster in $STATE_DIR/data"
# trust on loopback only: a throwaway server for tests, never listening beyond 127.0.0.1.
as_postgres "$BIN_DIR/initdb" -D "$STATE_DIR/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >&2
say "starting on 127.0.0.1:$port"
as_postgres "$BIN_DIR/pg_ctl" -D "$STATE_DIR/data" -l "$STATE_DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $STATE_DIR -c fsync=off" start >&2
as_postgres "$BIN_DIR/createdb" -h 127.0.0.1 -p "$port" -U postgres "$DATABASE" >&2
echo "$port" >"$STATE_DIR/port"
print_url "$port"
