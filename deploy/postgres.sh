#!/usr/bin/env bash
# PostgreSQL from Debian's packages, as the SQL executor's target: a private cluster listening on
# 127.0.0.1 only, with role and database `keyturn`.
# Usage: postgres.sh install|start|stop|status|endpoint (see deploy/README.md)
set -euo pipefail
NAME=postgres
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT=${KEYTURN_PG_PORT:-5433}
DATABASE_URL=${KEYTURN_DATABASE_URL:-postgresql://keyturn:keyturn@127.0.0.1:$PORT/keyturn}
DIR=$RUN/postgres

# as_owner COMMAND...: the server refuses to run as root, so as root one-off commands run as
# the `postgres` user.
as_owner() {
  if ((EUID == 0)); then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

# As root the cluster belongs to `postgres`, who cannot reach a KEYTURN_RUN below a private
# directory (a checkout under /root, say): the cluster then lives in /tmp, named after KEYTURN_RUN.
owner_can_reach() {
  local dir=$1
  while [[ ! -e $dir ]]; do dir=$(dirname "$dir"); done
  as_owner test -x "$dir" 2>/dev/null
}
if ((EUID == 0)) && id postgres >/dev/null 2>&1 && ! owner_can_reach "$DIR"; then
  DIR=/tmp/keyturn-postgres-$(printf '%s' "$RUN" | sha256sum | cut -c1-12)
fi
PGDATA=$DIR/data
SOCKET_DIR=$DIR/socket
LOG=$DIR/postgres.log

# The newest installed server, e.g. /usr/lib/postgresql/15/bin; KEYTURN_PG_BIN overrides.
pg_bin() {
  if [[ -n ${KEYTURN_PG_BIN:-} ]]; then
    printf '%s\n' "$KEYTURN_PG_BIN"
    return 0
  fi
  local dir
  dir=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n 1)
  [[ -n $dir && -x $dir/initdb ]] || return 1
  printf '%s\n' "$dir"
}

install() {
  local bin
  if bin=$(pg_bin); then
    say "using PostgreSQL in $bin"
    return 0
  fi
  say "installing Debian's postgresql package"
  debian_install postgresql
  bin=$(pg_bin) || die "postgresql installed but no initdb under /usr/lib/postgresql/*/bin"
  say "installed PostgreSQL in $bin"
}

init_cluster() {
  [[ ! -f $PGDATA/PG_VERSION ]] || return 0
  mkdir -p "$DIR"
  if ((EUID == 0)); then chown postgres:postgres "$DIR"; fi
  chmod 700 "$DIR"
  as_owner test -w "$DIR" || die "the postgres user cannot write $DIR"
  say "creating a cluster in $PGDATA"
  as_owner "$BIN/initdb" -D "$PGDATA" -U postgres -E UTF8 --locale=C \
    --auth-local=trust --auth-host=scram-sha-256 >>"$LOG" 2>&1 || {
    log_tail "$LOG"
    die "initdb failed"
  }
  as_owner mkdir -p -m 700 "$SOCKET_DIR"
}

# A client's ERROR is logged neither with its message nor with its statement: both quote what the
# client sent (an agent's statement run as an impact preview, a value the target refused), and the
# client already has them. The server's own lines (LOG: start, checkpoints; FATAL) stay. Written
# once into postgresql.conf, not passed on the command line, so ALTER SYSTEM can still turn it
# back (a test that reads a collision from the log does).
quiet_client_errors() {
  local conf=$PGDATA/postgresql.conf marker='# keyturn: client errors are not logged'
  grep -qxF "$marker" "$conf" && return 0
  printf '%s\n' "$marker" 'log_min_messages = log' 'log_min_error_statement = panic' | as_owner tee -a "$conf" >/dev/null
}

# Superuser statements over the private unix socket (trusted: only the owner can reach it).
admin_sql() {
  "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCKET_DIR" -p "$PORT" -U postgres -d postgres -tA "$@"
}

create_role_and_database() {
  admin_sql -c "DO \$\$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'keyturn') THEN
      CREATE ROLE keyturn LOGIN CREATEROLE PASSWORD 'keyturn';
    END IF; END \$\$;"
  # CREATEDB: tests make a target database of their own for the executors (never Keyturn's state)
  admin_sql -c "ALTER ROLE keyturn CREATEDB"
  if [[ -z $(admin_sql -c "SELECT 1 FROM pg_database WHERE datname = 'keyturn'") ]]; then
    admin_sql -c "CREATE DATABASE keyturn OWNER keyturn"
    say "created role and database keyturn"
  fi
}

accepting() { "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; }

# Ready, and a real login with the keyturn password over TCP answers a query.
healthy() {
  local psql
  psql=$(command -v psql || printf '%s/psql' "$(pg_bin)")
  [[ $(PGCONNECT_TIMEOUT=3 "$psql" -X -tA "$DATABASE_URL" -c 'select 1' 2>/dev/null) == 1 ]]
}

start() {
  if [[ -n ${KEYTURN_DATABASE_URL:-} ]]; then
    healthy || die "external database (KEYTURN_DATABASE_URL) does not answer 'select 1'"
    say "using the external database from KEYTURN_DATABASE_URL; nothing started"
    return 0
  fi
  take_lock
  local pid
  if pid=$(running_pid "-D $PGDATA"); then
    DATABASE_URL=$(<"$(endpoint_file)")
    healthy || die "running (pid $pid) at $DATABASE_URL but not healthy; see $LOG"
    say "already running (pid $pid) at $DATABASE_URL"
    return 0
  fi
  install
  BIN=$(pg_bin)
  init_cluster
  require_free_port "$PORT" KEYTURN_PG_PORT
  local started=$EPOCHREALTIME server=("$BIN/postgres")
  # setpriv, unlike runuser, execs in place, so the recorded PID is the postmaster itself.
  if ((EUID == 0)); then server=(setpriv --reuid=postgres --regid=postgres --init-groups -- "${server[@]}"); fi
  quiet_client_errors
  # 200 connections, not the default 100: each executor keeps an admin connection per SQL command
  # it may run at once (16) besides the commands' own logins and every service's pool
  pid=$(cd / && spawn "$LOG" "${server[@]}" -D "$PGDATA" -p "$PORT" \
    -c listen_addresses=127.0.0.1 -c unix_socket_directories="$SOCKET_DIR" -c max_connections=200)
  printf '%s\n' "$DATABASE_URL" >"$(endpoint_file)"
  wait_healthy "$pid" accepting "$LOG"
  create_role_and_database
  healthy || die "started (pid $pid) but cannot log in as keyturn; see $LOG"
  say "started (pid $pid) at $DATABASE_URL in $(since "$started"); log $LOG"
}

# SIGINT is the server's fast shutdown: open sessions are rolled back, not waited for.
stop() {
  if [[ -n ${KEYTURN_DATABASE_URL:-} ]]; then
    say "using the external database from KEYTURN_DATABASE_URL; nothing to stop"
    return 0
  fi
  stop_recorded "-D $PGDATA" INT
}

status() {
  if [[ -n ${KEYTURN_DATABASE_URL:-} ]]; then
    healthy || {
      say "external database (KEYTURN_DATABASE_URL) not answering"
      return 1
    }
    say "external database from KEYTURN_DATABASE_URL"
    return 0
  fi
  status_recorded "-D $PGDATA" healthy DATABASE_URL
}

endpoint() {
  if [[ -n ${KEYTURN_DATABASE_URL:-} ]]; then
    printf '%s\n' "$DATABASE_URL"
    return 0
  fi
  endpoint_recorded "-D $PGDATA"
}

dispatch "$@"
