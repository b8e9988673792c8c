#!/usr/bin/env bash
# Shared by deploy/{kafka,opa,postgres,stack}.sh: paths, messages, pid-file process control and
# health waiting. Sourced, never run. A caller sets NAME (used in messages, pid and lock files).

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=$(realpath -m "${KEYTURN_CACHE:-$REPO/.cache}")
RUN=$(realpath -m "${KEYTURN_RUN:-$REPO/.run}")
START_TIMEOUT=${KEYTURN_START_TIMEOUT:-60}
STOP_TIMEOUT=${KEYTURN_STOP_TIMEOUT:-20}

say() { printf '%s: %s\n' "$NAME" "$*"; }
warn() { printf '%s: %s\n' "$NAME" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$NAME" "$*" >&2
  exit 1
}

pid_file() { printf '%s/%s.pid' "$RUN" "$NAME"; }
endpoint_file() { printf '%s/%s.endpoint' "$RUN" "$NAME"; }
# The process's start time (clock ticks after boot) beside its PID tells a recycled PID apart.
starttime_file() { printf '%s/%s.pid.starttime' "$RUN" "$NAME"; }
forget() { rm -f "$(pid_file)" "$(starttime_file)" "$(endpoint_file)"; }

# Serialises start/stop of one server, so parallel test workers cannot start it twice.
take_lock() {
  mkdir -p "$RUN"
  exec 9>"$RUN/$NAME.lock"
  flock 9
}

# with_cache_lock NAME COMMAND...: runs COMMAND holding a lock in the cache, so that two
# checkouts sharing KEYTURN_CACHE never fill the same cache entry at once.
with_cache_lock() {
  local lock=$CACHE/.$1.lock
  shift
  mkdir -p "$CACHE"
  {
    flock 8
    "$@"
  } 8>"$lock"
}

# debian_install PACKAGE...: installs Debian packages as root. One apt-get at a time: `make test`
# installs the browser while the stack installs its servers, and dpkg refuses a second caller.
debian_install() {
  ((EUID == 0)) || die "$* not installed; run as root: apt-get install -y $*"
  command -v apt-get >/dev/null || die "$* not installed and no apt-get here"
  with_cache_lock apt _apt_install "$@"
}
_apt_install() {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# proc_stat PID FIELD: one field of /proc/PID/stat, counted from 1 after the "(command)" field.
proc_stat() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  read -ra stat <<<"$stat"
  printf '%s\n' "${stat[$2 - 1]}"
}

# A process is alive when it exists and is not a zombie waiting for its parent.
alive() {
  local state
  state=$(proc_stat "$1" 1) || return 1
  [[ $state != Z ]]
}

# Prints the recorded PID when that very process (same start time) is alive and its command line
# contains $1; otherwise forgets the stale records.
running_pid() {
  local match=$1 pid
  [[ -s $(pid_file) ]] || return 1
  pid=$(<"$(pid_file)")
  if [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" &&
    [[ $(proc_stat "$pid" 20) == "$(cat "$(starttime_file)" 2>/dev/null)" ]] &&
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$match"; then
    printf '%s\n' "$pid"
    return 0
  fi
  forget
  return 1
}

# Starts "$@" detached in its own session, output appended to $1's log; records its PID.
spawn() {
  local log=$1
  shift
  mkdir -p "$(dirname "$log")"
  # fd 9 is the start/stop lock: the server must not inherit (and so hold) it.
  setsid "$@" >>"$log" 2>&1 </dev/null 9>&- &
  printf '%s\n' "$!" >"$(pid_file)"
  proc_stat "$!" 20 >"$(starttime_file)"
  printf '%s\n' "$!"
}

# since T0: seconds elapsed since T0 (a saved $EPOCHREALTIME), to one decimal.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1fs", b - a }'; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# Refuses to start when another process already listens on the port we were given.
require_free_port() {
  local port=$1 var=$2
  if port_open 127.0.0.1 "$port"; then
    die "port $port on 127.0.0.1 is already used by another process; choose another with $var=<port>"
  fi
}

http_ok() {
  if command -v curl >/dev/null; then
    curl -fsS -o /dev/null --max-time 3 "$1" 2>/dev/null
  else
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)' "$1" 2>/dev/null
  fi
}

# Prints the last lines of each log file that exists, to explain a failed start.
log_tail() {
  local f
  for f in "$@"; do
    [[ -s $f ]] || continue
    printf -- '----- last lines of %s -----\n' "$f" >&2
    tail -n 40 "$f" >&2
  done
}

# wait_healthy PID CHECK [LOG...]: polls the command CHECK until it succeeds. Fails fast when
# PID exits, and after START_TIMEOUT seconds stops PID; both print the log tails.
wait_healthy() {
  local pid=$1 check=$2 deadline
  shift 2
  deadline=$((SECONDS + START_TIMEOUT))
  until "$check"; do
    if ! alive "$pid"; then
      log_tail "$@"
      forget
      die "process $pid exited during start-up (logs above)"
    fi
    if ((SECONDS >= deadline)); then
      log_tail "$@"
      stop_pid "$pid" TERM
      forget
      die "not healthy after ${START_TIMEOUT}s; stopped pid $pid (logs above; raise KEYTURN_START_TIMEOUT if the machine is slow)"
    fi
    sleep 0.3
  done
}

# stop_pid PID SIGNAL: sends SIGNAL to exactly PID, waits STOP_TIMEOUT seconds, then KILLs it
# (and sets STOP_FORCED=1).
STOP_FORCED=0
stop_pid() {
  local pid=$1 signal=$2 deadline
  kill "-$signal" "$pid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT))
  while alive "$pid"; do
    if ((SECONDS >= deadline)); then
      warn "pid $pid still alive after ${STOP_TIMEOUT}s; sending KILL"
      STOP_FORCED=1
      kill -KILL "$pid" 2>/dev/null || true
      deadline=$((SECONDS + 5))
      while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
      break
    fi
    sleep 0.1
  done
}

# stop_recorded MATCH SIGNAL: the whole `stop` command of a server started by spawn.
stop_recorded() {
  local match=$1 signal=$2 pid
  take_lock
  if ! pid=$(running_pid "$match"); then
    say "not running"
    return 0
  fi
  stop_pid "$pid" "$signal"
  forget
  if ((STOP_FORCED)); then say "killed (pid $pid)"; else say "stopped (pid $pid)"; fi
}

# status_recorded MATCH CHECK VAR: sets VAR to the recorded endpoint before running CHECK.
# Exit 0 running and healthy, 1 running but unhealthy, 3 stopped.
status_recorded() {
  local match=$1 check=$2 var=$3 pid endpoint
  if ! pid=$(running_pid "$match"); then
    say "stopped"
    return 3
  fi
  endpoint=$(cat "$(endpoint_file)" 2>/dev/null || true)
  printf -v "$var" '%s' "$endpoint"
  if "$check"; then
    say "running (pid $pid) at $endpoint"
    return 0
  fi
  say "running (pid $pid) at $endpoint but not healthy"
  return 1
}

# endpoint_recorded MATCH: prints the endpoint recorded at start while that process lives (no
# health check: cheap enough to call before every test session). Exit 3 when stopped.
endpoint_recorded() {
  running_pid "$1" >/dev/null || return 3
  cat "$(endpoint_file)"
}

# dispatch COMMAND: runs the function of the same name.
dispatch() {
  case ${1:-} in
  install | start | stop | status | endpoint) "$1" ;;
  *)
    printf 'usage: %s install|start|stop|status|endpoint\n' "$0" >&2
    exit 2
    ;;
  esac
}
