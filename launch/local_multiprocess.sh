#!/usr/bin/env bash
# Run N local CPU processes of `python -m ssl_jax.main` that form one multi-process JAX run on
# this machine: the multi-host code path (jax.distributed, one process per "host", each with
# its own devices and its own slice of the input) on a laptop. See --help.
set -euo pipefail

PROG=local_multiprocess.sh

usage() {
  cat <<'EOF'
Usage: launch/local_multiprocess.sh [OPTIONS] -- FLAGS...

Start N local CPU processes of `python -m ssl_jax.main` that form one multi-process JAX
run (the multi-host code path, on one machine). FLAGS, after `--`, go to every process:

  launch/local_multiprocess.sh --num_processes=2 --devices_per_process=4 -- \
      --config=configs/byol.py:demo --workdir=/tmp/byol_2x4

Process i (0 <= i < N) is started as
  XLA_FLAGS="$XLA_FLAGS --xla_force_host_platform_device_count=D" JAX_PLATFORMS=cpu \
  PYTHON -m MODULE --coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=i FLAGS...
so the run sees N x D CPU devices in all. Process 0 is the coordinator.

Options:
  --num_processes=N        processes (default 2)
  --devices_per_process=D  simulated CPU devices per process (default 4)
  --port=PORT              coordinator port on 127.0.0.1 (default: a free port)
  --python=PYTHON          interpreter (default: python, else python3, from PATH)
  --module=MODULE          module run with -m (default ssl_jax.main)
  --log_dir=DIR            process i's output goes to DIR/process_i.log
                           (default: a new temporary directory, printed on stderr)
  --grace_period=SECONDS   after a process fails, the others get SIGTERM and then SIGKILL
                           after this many seconds (default 30)
  --dry_run                print the N commands, one per line, and exit 0
  -h, --help               this text

Process 0's output is also shown on stdout. The script waits for all processes. If one exits
with a non-zero code, the others are stopped (SIGTERM, then SIGKILL after the grace period)
and the script exits with that first code. Ctrl-C or SIGTERM to the script is forwarded to
every process as SIGTERM (a second one sends SIGKILL): ssl_jax.main then finishes the current
step, writes a checkpoint and exits with code 75, which this script passes through unchanged.
Exit code 75 means "preempted, checkpoint written": rerun the same command to resume from
the workdir.
A launcher started in the background by a script (`... &` without job control) has
SIGINT ignored, as every POSIX shell arranges, and cannot trap it: stop that one with SIGTERM.

Exit codes: the first non-zero exit code of a process (75: rerun to resume), 0 when all
succeed, 2 for bad arguments.
EOF
}

LAUNCH_DIR=.; [[ ${BASH_SOURCE[0]} == */* ]] && LAUNCH_DIR=${BASH_SOURCE[0]%/*}
# shellcheck source=launch/common.sh
. "$LAUNCH_DIR/common.sh"

NUM_PROCESSES=2
DEVICES_PER_PROCESS=4
PORT=""
PYTHON=""
MODULE=ssl_jax.main
LOG_DIR=""
GRACE_PERIOD=30
DRY_RUN=0
FLAGS=()
SEEN_DASHDASH=0

while (($#)); do
  arg=$1
  shift
  case $arg in
    --) SEEN_DASHDASH=1; FLAGS=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    --dry_run|--dry-run) DRY_RUN=1 ;;
    --num_processes=*) NUM_PROCESSES=${arg#*=} ;;
    --devices_per_process=*) DEVICES_PER_PROCESS=${arg#*=} ;;
    --port=*) PORT=${arg#*=} ;;
    --python=*) PYTHON=${arg#*=} ;;
    --module=*) MODULE=${arg#*=} ;;
    --log_dir=*) LOG_DIR=${arg#*=} ;;
    --grace_period=*) GRACE_PERIOD=${arg#*=} ;;
    --num_processes|--devices_per_process|--port|--python|--module|--log_dir|--grace_period)
      die_usage "$arg needs a value: write $arg=VALUE" ;;
    *) die_usage "unknown option '$arg' (the flags for ssl_jax.main go after '--'; see --help)" ;;
  esac
done

is_int() { [[ $1 =~ ^[0-9]+$ ]]; }
is_positive_int() { is_int "$1" && ((10#$1 >= 1)); }

is_positive_int "$NUM_PROCESSES" ||
  die_usage "--num_processes must be an integer >= 1, got '$NUM_PROCESSES'"
is_positive_int "$DEVICES_PER_PROCESS" ||
  die_usage "--devices_per_process must be an integer >= 1, got '$DEVICES_PER_PROCESS'"
is_int "$GRACE_PERIOD" || die_usage "--grace_period must be an integer >= 0 (seconds), got '$GRACE_PERIOD'"
NUM_PROCESSES=$((10#$NUM_PROCESSES))
DEVICES_PER_PROCESS=$((10#$DEVICES_PER_PROCESS))
GRACE_PERIOD=$((10#$GRACE_PERIOD))
if [[ -n $PORT ]]; then
  if ! is_positive_int "$PORT" || ((10#$PORT > 65535)); then
    die_usage "--port must be an integer in 1..65535, got '$PORT'"
  fi
  PORT=$((10#$PORT))
fi
[[ -n $MODULE ]] || die_usage "--module must not be empty"
((SEEN_DASHDASH && ${#FLAGS[@]})) ||
  die_usage "missing the flags for $MODULE: add them after '--', e.g. -- --config=configs/byol.py:demo --workdir=/tmp/run"

if [[ -z $PYTHON ]]; then
  if command -v python >/dev/null 2>&1; then PYTHON=python; else PYTHON=python3; fi
fi

PIDS=()        # PIDS[i]: pid of process i while it runs, empty once it has been reaped
STOPPING=0     # 1 once the processes were asked to stop (SIGTERM sent)

signal_all() {  # signal_all SIG: send SIG to every process still running
  local pid
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do
    [[ -n $pid ]] && kill "-$1" "$pid" 2>/dev/null || true
  done
}

# The traps are set before the first external command: a Ctrl-C that comes while bash waits
# for a foreground command (mkdir, mkfifo, ...) that does not die of it is dropped without a
# trap (bash's wait-and-cooperative-exit). A signal that comes before the processes are all
# started is only noted, and acted on once
# the loop has recorded the pid of every process it forked: bash runs a trap between two
# commands, so a trap run between `CMD &` and `PIDS[i]=$!` would not see process i, which
# then never got SIGTERM and kept the script waiting (a Ctrl-C "lost" under load).
STARTING=1
PENDING=()     # the signals noted while STARTING, as "NAME RC"
# shellcheck disable=SC2329
on_signal() {  # first Ctrl-C / SIGTERM: forward SIGTERM (checkpoint, exit 75); second: SIGKILL
  if ((STARTING)); then
    PENDING+=("$1 $2")
  elif ((STOPPING)); then
    echo "$PROG: $1 again: killing every process" >&2
    signal_all KILL
  else
    STOPPING=1
    SIGNAL_RC=$2
    echo "$PROG: $1: forwarding SIGTERM to every process (they checkpoint and exit 75; $1 again to kill)" >&2
    signal_all TERM
  fi
}
SIGNAL_RC=0    # 128 + the signal that stopped the script, if one did
trap 'on_signal SIGINT 130' INT
trap 'on_signal SIGTERM 143' TERM
trap 'on_signal SIGHUP 129' HUP

if [[ -z $PORT ]]; then
  # A port that is free now (the OS picks it); the coordinator binds it a moment later.
  PORT=$("$PYTHON" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])') || {
    echo "$PROG: error: could not pick a free port with '$PYTHON'; pass --port=PORT or --python=PYTHON" >&2
    exit 2
  }
fi

# Keep the caller's XLA_FLAGS, minus any device count of its own, and append ours.
XLA=""
for f in ${XLA_FLAGS:-}; do
  [[ $f == --xla_force_host_platform_device_count=* ]] || XLA+="$f "
done
XLA+="--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS"

command_for() {  # command_for I: the argv of process I in CMD
  CMD=("$PYTHON" -m "$MODULE" "--coordinator_address=127.0.0.1:$PORT"
       "--num_processes=$NUM_PROCESSES" "--process_id=$1" "${FLAGS[@]}")
}

if ((DRY_RUN)); then
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    command_for "$i"
    line="$(quote "XLA_FLAGS=$XLA") JAX_PLATFORMS=cpu"
    for w in "${CMD[@]}"; do line+=" $(quote "$w")"; done
    printf '%s\n' "$line"
  done
  exit 0
fi

if [[ -z $LOG_DIR ]]; then
  LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ssl_jax_local.XXXXXX")
else
  mkdir -p "$LOG_DIR"
fi
echo "$PROG: $NUM_PROCESSES processes x $DEVICES_PER_PROCESS CPU devices, coordinator 127.0.0.1:$PORT, logs in $LOG_DIR" >&2

TEE_PID=""
FIFO="$LOG_DIR/.process_0.fifo"


# shellcheck disable=SC2329  # called by the traps below
cleanup() {  # on exit, whatever the reason: no process is left behind
  signal_all KILL
  [[ -n $TEE_PID ]] && kill "$TEE_PID" 2>/dev/null || true
  rm -f "$FIFO"
}
trap cleanup EXIT


# Process 0 writes into a FIFO read by tee, so that its output reaches the terminal and its
# log; the others write to their log only. Each background command execs the interpreter,
# so $! is the pid of the process itself.
# The script holds the FIFO open (fd 3, read-write) while it starts the processes, so that
# neither tee's open nor process 0's blocks: a process 0 killed before it opened the FIFO
# once left tee blocked in open() and the script in `wait $TEE_PID` for ever. fd 3 is closed
# in every child and, once the processes are started, in the script: tee then ends when
# process 0 does.
rm -f "$FIFO"
mkfifo "$FIFO"
exec 3<>"$FIFO"
tee "$LOG_DIR/process_0.log" <"$FIFO" 3>&- &
TEE_PID=$!
for ((i = 0; i < NUM_PROCESSES; i++)); do PIDS[i]=""; done
running=0
for ((i = 0; i < NUM_PROCESSES; i++)); do
  ((${#PENDING[@]})) && break   # a signal came while starting: start no more
  command_for "$i"
  if ((i == 0)); then
    XLA_FLAGS=$XLA JAX_PLATFORMS=cpu "${CMD[@]}" >"$FIFO" 2>&1 </dev/null 3>&- &
  else
    XLA_FLAGS=$XLA JAX_PLATFORMS=cpu "${CMD[@]}" >"$LOG_DIR/process_$i.log" 2>&1 </dev/null 3>&- &
  fi
  PIDS[i]=$!
  ((i == 0)) && STARTED_0=1
  running=$((running + 1))
done
started=$running
exec 3>&-
STARTING=0
# Every forked process is in PIDS now: act on the signals that came meanwhile (in order; a
# second one kills). One that comes from here on runs on_signal itself.
for sig in ${PENDING[@]+"${PENDING[@]}"}; do
  # shellcheck disable=SC2086  # "NAME RC": two words
  on_signal $sig
done

# Wait for all, polling (portable to old bash without `wait -n`; traps run between polls).
FIRST_RC=0
KILL_AT=""
while ((running > 0)); do
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    pid=${PIDS[i]}
    [[ -z $pid ]] && continue
    kill -0 "$pid" 2>/dev/null && continue
    rc=0
    wait "$pid" || rc=$?
    PIDS[i]=""
    running=$((running - 1))
    if ((rc != 0 && FIRST_RC == 0)); then
      FIRST_RC=$rc
      echo "$PROG: process $i exited with code $rc (log: $LOG_DIR/process_$i.log)" >&2
      if ((running > 0)) && ((!STOPPING)); then
        echo "$PROG: stopping the other processes (SIGTERM, SIGKILL after ${GRACE_PERIOD}s)" >&2
        STOPPING=1
        signal_all TERM
        KILL_AT=$((SECONDS + GRACE_PERIOD))
      fi
    fi
  done
  if [[ -n $KILL_AT ]] && ((running > 0 && SECONDS >= KILL_AT)); then
    echo "$PROG: grace period over: killing the remaining processes" >&2
    signal_all KILL
    KILL_AT=""
  fi
  # The pause is a background sleep and the wait builtin: a trapped signal interrupts `wait` at
  # once and runs its trap (bash's manual), where a foreground sleep leaves SIGINT to bash's
  # wait-and-cooperative-exit rules (one CI run saw Ctrl-C lost there: no trap ran).
  if ((running > 0)); then sleep 0.1 & wait "$!" || true; fi
done

# Let tee drain what process 0 wrote last (or stop it if process 0 never started).
[[ -n ${STARTED_0:-} ]] || kill "$TEE_PID" 2>/dev/null || true
wait "$TEE_PID" || true
TEE_PID=""
if ((started < NUM_PROCESSES && FIRST_RC == 0)); then
  echo "$PROG: stopped by a signal before every process was started" >&2
  FIRST_RC=$((SIGNAL_RC ? SIGNAL_RC : 1))
fi
if ((FIRST_RC == 75)); then
  echo "$PROG: exit 75: preempted, checkpoint written; rerun the same command to resume" >&2
elif ((FIRST_RC != 0)); then
  echo "$PROG: failed with exit code $FIRST_RC; logs in $LOG_DIR" >&2
fi
exit "$FIRST_RC"
