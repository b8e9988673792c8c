#!/usr/bin/env bash
# Open Policy Agent server on 127.0.0.1, serving policies.rego/ (policies, their tests and data
# files) and reloading them on change; with KEYTURN_OPA_BUNDLE=1, as a bundle with a revision.
# Usage: opa.sh install|start|stop|status|endpoint (see deploy/README.md)
set -euo pipefail
NAME=opa
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

OPA_VERSION=1.22.3
PORT=${KEYTURN_OPA_PORT:-8181}
URL=${KEYTURN_OPA_URL:-http://127.0.0.1:$PORT}
POLICIES=${KEYTURN_POLICIES:-$REPO/policies.rego}
DIR=$RUN/opa
# Error keeps the log quiet; a policy that fails to load on reload is logged only at info.
LOG_LEVEL=${KEYTURN_OPA_LOG_LEVEL:-error}
BUILD_DIR=$CACHE/opa-build

version_of() { "$1" version 2>/dev/null | sed -n 's/^Version: //p'; }

# Prints the opa binary to use: KEYTURN_OPA_BIN, else the pinned version from PATH, else the
# one built into the cache. A binary of another version is passed over, so the pin holds.
find_opa() {
  if [[ -n ${KEYTURN_OPA_BIN:-} ]]; then
    printf '%s\n' "$KEYTURN_OPA_BIN"
    return 0
  fi
  local candidate found
  for candidate in "$(command -v opa || true)" "$CACHE/bin/opa"; do
    [[ -n $candidate && -x $candidate ]] || continue
    found=$(version_of "$candidate")
    if [[ $found == "$OPA_VERSION" ]]; then
      printf '%s\n' "$candidate"
      return 0
    fi
    warn "passing over $candidate: version ${found:-unknown}, pinned $OPA_VERSION"
  done
  return 1
}

# GOGC=400 for the go tool and the compiler it runs (not the OPA it builds): they collect garbage
# a quarter as often. Building OPA from scratch took 187 s of CPU instead of 235 s (wall 117 s
# instead of 142 s) at the same peak memory, 0.46 GB; at 800 it took 179 s and 0.61 GB.
go_env() {
  env GOPATH="$CACHE/go" GOBIN="$CACHE/bin" GOCACHE="$CACHE/go-build" GOFLAGS=-mod=mod GOGC=400 "$@"
}

# A tool binary, not one to debug: without debug information the build from a fresh clone (on the
# path of `make test`) took 78 s instead of 95 s here, and the binary is 43 MB instead of 60.
BUILD_FLAGS=(-trimpath "-ldflags=-s -w" -gcflags=all=-dwarf=false)

# Plan B when `go install` refuses OPA's go.mod: a one-file module that requires OPA and runs
# its root command.
build_wrapper() {
  mkdir -p "$BUILD_DIR"
  cat >"$BUILD_DIR/go.mod" <<EOF
module keyturn.local/opa-build

go 1.26

require github.com/open-policy-agent/opa v$OPA_VERSION
EOF
  cat >"$BUILD_DIR/main.go" <<'EOF'
package main

import (
	"errors"
	"os"

	"github.com/open-policy-agent/opa/cmd"
)

func main() {
	if err := cmd.RootCommand.Execute(); err != nil {
		var exit *cmd.ExitError
		if errors.As(err, &exit) {
			os.Exit(exit.Exit)
		}
		os.Exit(1)
	}
}
EOF
  (cd "$BUILD_DIR" && go_env go mod tidy && go_env go build "${BUILD_FLAGS[@]}" -o "$CACHE/bin/opa" .)
}

install() { with_cache_lock opa build_opa; }

build_opa() {
  local bin
  if bin=$(find_opa); then
    say "using $bin (version $(version_of "$bin"))"
    return 0
  fi
  command -v go >/dev/null || die "no opa $OPA_VERSION on PATH or in $CACHE/bin, and no go to build it"
  say "building opa $OPA_VERSION into $CACHE/bin (takes minutes the first time)"
  mkdir -p "$CACHE/bin"
  rm -f "$CACHE/bin/opa" # a binary of another version; go would refuse to overwrite a non-binary
  if ! go_env go install "${BUILD_FLAGS[@]}" "github.com/open-policy-agent/opa@v$OPA_VERSION"; then
    warn "go install failed; building through a wrapper module in $BUILD_DIR"
    build_wrapper || die "could not build opa $OPA_VERSION"
  fi
  [[ $(version_of "$CACHE/bin/opa") == "$OPA_VERSION" ]] ||
    die "built $CACHE/bin/opa but it reports version $(version_of "$CACHE/bin/opa")"
  say "built $CACHE/bin/opa"
}

healthy() { http_ok "$URL/health"; }

# The revision a bundle is built with: a digest of every file OPA would load (policies, data),
# so the same policies always give the same revision and any change gives another.
policy_digest() {
  (cd "$POLICIES" && find . -type f \( -name '*.rego' -o -name '*.json' -o -name '*.yaml' -o -name '*.yml' \) \
    ! -name '*_test.rego' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
}

start() {
  if [[ -n ${KEYTURN_OPA_URL:-} ]]; then
    healthy || die "external OPA $URL (KEYTURN_OPA_URL) does not answer on /health"
    say "using the external OPA at $URL (KEYTURN_OPA_URL); nothing started"
    return 0
  fi
  take_lock
  local pid bin serving
  [[ -d $POLICIES ]] || die "no policy directory $POLICIES"
  # how OPA is to serve the policies: "watch", or "bundle <revision>" (KEYTURN_OPA_BUNDLE=1)
  serving=watch
  if [[ ${KEYTURN_OPA_BUNDLE:-0} == 1 ]]; then serving="bundle $(policy_digest)"; fi
  if pid=$(running_pid "opa run --server"); then
    URL=$(<"$(endpoint_file)")
    if [[ $(cat "$DIR/serving" 2>/dev/null) == "$serving" ]]; then
      healthy || die "running (pid $pid) at $URL but not healthy; see $DIR/opa.log"
      say "already running (pid $pid) at $URL"
      return 0
    fi
    # a bundle is built once: a running OPA would go on serving the policies as they were
    say "running (pid $pid) but not as asked ($serving; the policies or the mode changed): restarting"
    stop_pid "$pid" TERM
    forget
  fi
  install
  bin=$(find_opa)
  require_free_port "$PORT" KEYTURN_OPA_PORT
  local started=$EPOCHREALTIME
  # decision logs on: OPA only issues decision ids (our provenance) when it logs decisions;
  # the log is OPA's own file, and parameters in it are already masked
  # GOGC=200: OPA's heap is small and steady, so collecting half as often costs little memory and
  # measured about a tenth less CPU per decision under load (KEYTURN_OPA_GOGC to change)
  # KEYTURN_OPA_BUNDLE=1: served as production serves it, a bundle built with a revision (the
  # digest of the policy files), which OPA names in every answer's provenance; no hot reload.
  # Otherwise the directory, watched: a change is live at once, and the policy service reads the
  # revision from the loaded modules (once a second).
  local source=(--watch --ignore '*_test.rego' "$POLICIES") what="watching $POLICIES"
  mkdir -p "$DIR"
  if [[ $serving == bundle* ]]; then
    "$bin" build --bundle "$POLICIES" --ignore '*_test.rego' --revision "${serving#bundle }" \
      --output "$DIR/bundle.tar.gz" >>"$DIR/opa.log" 2>&1 || die "opa build failed; see $DIR/opa.log"
    source=(--bundle "$DIR/bundle.tar.gz")
    what="serving the bundle of $POLICIES at revision ${serving#bundle }"
  fi
  pid=$(GOGC="${KEYTURN_OPA_GOGC:-200}" spawn "$DIR/opa.log" "$bin" run --server --addr "127.0.0.1:$PORT" \
    --log-level "$LOG_LEVEL" --skip-version-check --set decision_logs.console=true "${source[@]}")
  printf '%s\n' "$URL" >"$(endpoint_file)"
  printf '%s\n' "$serving" >"$DIR/serving"
  wait_healthy "$pid" healthy "$DIR/opa.log"
  say "started (pid $pid) at $URL in $(since "$started"), $what; log $DIR/opa.log"
}

stop() {
  if [[ -n ${KEYTURN_OPA_URL:-} ]]; then
    say "using the external OPA at $URL (KEYTURN_OPA_URL); nothing to stop"
    return 0
  fi
  stop_recorded "opa run --server" TERM
}

status() {
  if [[ -n ${KEYTURN_OPA_URL:-} ]]; then
    healthy || {
      say "external OPA $URL not answering"
      return 1
    }
    say "external OPA at $URL"
    return 0
  fi
  status_recorded "opa run --server" healthy URL
}

endpoint() {
  if [[ -n ${KEYTURN_OPA_URL:-} ]]; then
    printf '%s\n' "$URL"
    return 0
  fi
  endpoint_recorded "opa run --server"
}

dispatch "$@"
