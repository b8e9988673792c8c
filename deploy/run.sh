#!/usr/bin/env bash
# `make run`: the servers plus the five services on loopback, in the foreground.
# Ctrl-C stops the services and the servers this script started.
set -euo pipefail
NAME=run
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"
T0=$EPOCHREALTIME

# servers named by the user's KEYTURN_* variables are theirs: stack.sh neither starts nor stops them
OURS=()
for variable in KEYTURN_KAFKA_BOOTSTRAP KEYTURN_OPA_URL KEYTURN_DATABASE_URL; do
  [[ -n ${!variable:-} ]] || OURS+=(-u "$variable")
done
"$REPO/deploy/stack.sh" up
eval "$("$REPO/deploy/stack.sh" env)"
# Agents' statements run on a database of their own beside Keyturn's, as a development target
# serving staging (unless the user named a target, or a server of theirs): in Keyturn's own
# database a command's role could take the locks its services take (advisory locks are per
# database) or wait on its tables. The keyturn role may create databases (deploy/postgres.sh).
if [[ -z ${KEYTURN_SQL_TARGET_URL:-} && " ${OURS[*]} " == *" KEYTURN_DATABASE_URL "* ]]; then
  export KEYTURN_SQL_TARGET_URL=${KEYTURN_DATABASE_URL%/*}/keyturn_target
  export KEYTURN_SQL_TARGET_ENVIRONMENTS=${KEYTURN_SQL_TARGET_ENVIRONMENTS:-staging}
  "$REPO/.venv/bin/python" - "$KEYTURN_DATABASE_URL" <<'PY'
import sys

import psycopg

with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'keyturn_target'").fetchone() is None:
        conn.execute("CREATE DATABASE keyturn_target")
        print("run: created database keyturn_target (the development SQL target)")
PY
fi
SQL_TARGET=${KEYTURN_SQL_TARGET_URL:-$KEYTURN_DATABASE_URL}
export KEYTURN_RUN_DIR=${KEYTURN_RUN_DIR:-$RUN}
LOGS=$RUN/logs
mkdir -p "$LOGS"
KEYTURN=("$REPO/.venv/bin/keyturn")

PIDS=()
stop_all() {
  trap - INT TERM EXIT
  say "stopping services"
  ((${#PIDS[@]})) && kill "${PIDS[@]}" 2>/dev/null || true
  ((${#PIDS[@]})) && wait "${PIDS[@]}" 2>/dev/null || true
  env "${OURS[@]}" "$REPO/deploy/stack.sh" down || true
  say "stopped"
}
trap stop_all EXIT
trap 'exit 0' INT TERM

for service in intake policy approval executor audit; do
  "${KEYTURN[@]}" serve "$service" >>"$LOGS/$service.log" 2>&1 &
  PIDS+=($!)
done

intake=${KEYTURN_INTAKE_URL:-http://127.0.0.1:8080}
approval=${KEYTURN_APPROVAL_URL:-http://127.0.0.1:8090}
deadline=$((SECONDS + 90))
until http_ok "$intake/healthz" && http_ok "$approval/healthz" ; do
  for pid in "${PIDS[@]}"; do
    alive "$pid" || die "a service exited; see $LOGS/*.log"
  done
  ((SECONDS < deadline)) || die "services did not answer within 90s; see $LOGS/*.log"
  sleep 0.5
done

cat <<MSG

Keyturn is up in $(since "$T0").
  intake     $intake      (POST /v1/actions, GET /v1/actions/{id}, /docs)
  approvals  $approval      (GET /v1/approvals, /docs)
  logs       $LOGS/<service>.log
  Kafka $KEYTURN_KAFKA_BOOTSTRAP · OPA $KEYTURN_OPA_URL · PostgreSQL $KEYTURN_DATABASE_URL
  SQL target (where agents' statements run) $SQL_TARGET

Try it, in another shell (from $REPO):
  export PATH=\$PWD/.venv/bin:\$PATH
  psql $SQL_TARGET -c 'CREATE ROLE analyst' -c 'CREATE ROLE bob'          # on the SQL target
  AGENT=\$(keyturn token issue --sub agent:reporter --act human:alice)
  curl -s -X POST $intake/v1/actions -H "Authorization: Bearer \$AGENT" -H 'Content-Type: application/json' \\
       -d '{"action":"iam.role.grant","resource":"iam://staging/roles/analyst","parameters":{"principal":"bob","role":"analyst"},"reason":"onboarding"}'
  keyturn token issue --sub human:carol | keyturn approve ACTION_ID --token -      # carol is in group security
  echo "\$AGENT" | keyturn status ACTION_ID --token - --wait 10                     # succeeded: GRANT analyst TO bob
  psql $SQL_TARGET -c '\\du bob'                                            # bob is a member of analyst
  keyturn audit tail

Ctrl-C stops everything.
MSG
wait -n "${PIDS[@]}" || true
die "a service stopped unexpectedly; see $LOGS/*.log"
