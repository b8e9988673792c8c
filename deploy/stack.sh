#!/usr/bin/env bash
# The whole local stack (Kafka, OPA, PostgreSQL) at once. Usage: stack.sh install|up|down|status|env
#   install fetch or build what is missing (jars, OPA, PostgreSQL's binaries), all three at once
#   up      install what is missing and start all three, in parallel; prints the endpoints
#   down    stop all three
#   status  one line per server; exit 0 only when all three are healthy
#   env     export lines for the running stack: eval "$(deploy/stack.sh env)"
set -euo pipefail
NAME=stack
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SERVERS=(kafka opa postgres)
declare -A VARIABLE=([kafka]=KEYTURN_KAFKA_BOOTSTRAP [opa]=KEYTURN_OPA_URL [postgres]=KEYTURN_DATABASE_URL)

# each COMMAND: runs `<server>.sh COMMAND` for every server at once; FAILED lists the failures.
each() {
  local server
  local -A pids
  FAILED=()
  for server in "${SERVERS[@]}"; do
    "$REPO/deploy/$server.sh" "$1" &
    pids[$server]=$!
  done
  for server in "${SERVERS[@]}"; do
    wait "${pids[$server]}" || FAILED+=("$server")
  done
}

# The endpoint of one server: its override variable when set, else what its start recorded.
endpoint() { "$REPO/deploy/$1.sh" endpoint; }

up() {
  each start
  ((${#FAILED[@]} == 0)) || die "could not start: ${FAILED[*]} (see the messages above)"
  local server
  for server in "${SERVERS[@]}"; do
    printf '  %-24s %s\n' "${VARIABLE[$server]}" "$(endpoint "$server")"
  done
  say "up; for a shell: eval \"\$(deploy/stack.sh env)\""
}

install() {
  each install
  ((${#FAILED[@]} == 0)) || die "could not install: ${FAILED[*]} (see the messages above)"
}

down() {
  each stop
  ((${#FAILED[@]} == 0)) || die "could not stop: ${FAILED[*]}"
}

status() {
  local server rc=0
  for server in "${SERVERS[@]}"; do
    "$REPO/deploy/$server.sh" status || rc=1
  done
  return "$rc"
}

print_env() {
  local server value rc=0
  for server in "${SERVERS[@]}"; do
    if value=$(endpoint "$server"); then
      printf 'export %s=%q\n' "${VARIABLE[$server]}" "$value"
    else
      warn "$server is not running (deploy/stack.sh up)"
      rc=1
    fi
  done
  return "$rc"
}

case ${1:-} in
install | up | down | status) "$1" ;;
env) print_env ;;
*)
  printf 'usage: %s install|up|down|status|env\n' "$0" >&2
  exit 2
  ;;
esac
