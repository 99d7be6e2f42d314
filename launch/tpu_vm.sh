#!/usr/bin/env bash
# Cloud TPU VM slice launcher for ssl_jax: create a slice, copy this checkout to every host and
# install it, run `python -m ssl_jax.main --multihost` on every host, follow worker 0's log,
# optionally restart after preemption, delete the slice. See --help.
set -euo pipefail

PROG=tpu_vm.sh
LAUNCH_DIR=.; [[ ${BASH_SOURCE[0]} == */* ]] && LAUNCH_DIR=${BASH_SOURCE[0]%/*}
ROOT=$(cd "$LAUNCH_DIR/.." && pwd)   # the checkout (builtins only: checked before gcloud)

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh COMMAND [OPTIONS] [-- FLAGS...]

Run ssl_jax on every host of a Cloud TPU VM slice, one process per host. Each host runs
  python3 -m ssl_jax.main --multihost --config=CONFIG --workdir=WORKDIR FLAGS...
and jax.distributed.initialize() (--multihost) finds the coordinator and the process ids
from the TPU metadata. FLAGS (after `--`) go to ssl_jax.main, e.g.
-- --config.data.data_dir=gs://BUCKET/tfds --config.model.remat=True

Commands:
  create   create the slice (`tpu-vm create`; with --queued a queued resource, waited for
           until ACTIVE)
  setup    copy this checkout (tracked and untracked-but-not-ignored files) to ~/ssl_jax on
           every worker and `pip install -e . 'jax[tpu]'` there
  run      start the run on every worker in the background (nohup, output in
           ~/ssl_jax_run.log on each worker), then follow worker 0's log until the run ends;
           exits with worker 0's exit code. Ctrl-C stops following, not the run.
  up       create + setup + run
  logs     follow worker 0's log of the current run (exits with its exit code)
  stop     send SIGTERM to the run on every worker: it finishes the current step, writes a
           checkpoint and exits 75 (rerun `run` to resume)
  status   describe the slice
  delete   delete the slice (with --queued: the queued resource and its slice)

Options (environment variable in brackets):
  --tpu=NAME               slice name; also the queued resource's name [TPU_NAME]
  --zone=ZONE              e.g. us-central2-b (v4), us-west4-a (v5e) [ZONE]
  --project=PROJECT        passed to every gcloud command (default: gcloud's own setting)
  --accelerator_type=TYPE  e.g. v4-32 (16 chips, 4 hosts), v5litepod-32 (v5e, 32 chips,
                           8 hosts) [ACCELERATOR_TYPE]; needed by create/up, and by run
                           with --restart_on_preemption
  --version=VERSION        TPU software version (default tpu-ubuntu2204-base; v5e uses
                           v2-alpha-tpuv5-lite) [TPU_VERSION]
  --spot                   spot (preemptible) capacity
  --queued                 create/delete through `gcloud compute tpus queued-resources`
                           (node id = --tpu)
  --config=CONFIG          e.g. configs/byol.py:imagenet, a path inside this checkout [CONFIG]
  --workdir=WORKDIR        gs://BUCKET/DIR: checkpoints, metrics, results; every host must
                           reach it, and rerunning resumes from it [WORKDIR]
  --python=PYTHON          interpreter on the workers (default python3)
  --restart_on_preemption  `run`/`up`: while the run ends with exit code 75 (SIGTERM,
                           checkpoint written) or vanishes without an exit code (the VM
                           restarted), start it again on the same slice; when the slice itself
                           is gone or no longer READY (a spot slice preempted), delete it,
                           create it again, set it up and start the run again. Resuming from
                           WORKDIR makes every restart continue from the last checkpoint. A
                           lost ssh connection with the slice READY only re-attaches to the
                           log. Any other exit code ends the loop.
  --max_restarts=N         give up after N restarts (default 20)
  --no_follow              `run`: start the run and return without following the log
  --dry_run                print every gcloud command, in order, and exit 0 (no gcloud needed)
  -h, --help               this text

Examples:
  launch/tpu_vm.sh up --tpu=byol-v4 --zone=us-central2-b --accelerator_type=v4-32 \
      --config=configs/byol.py:imagenet --workdir=gs://BUCKET/byol -- \
      --config.data.data_dir=gs://BUCKET/tfds
  launch/tpu_vm.sh up --tpu=byol-v5e --zone=us-west4-a --accelerator_type=v5litepod-32 \
      --version=v2-alpha-tpuv5-lite --spot --queued --restart_on_preemption \
      --config=configs/byol.py:imagenet --workdir=gs://BUCKET/byol
  launch/tpu_vm.sh delete --tpu=byol-v4 --zone=us-central2-b

Exit codes: the run's exit code (75: stopped by SIGTERM with a checkpoint written, rerun to
resume), 2 for bad arguments, 1 when gcloud is missing or a gcloud command fails.
EOF
}

# shellcheck source=launch/common.sh
. "$LAUNCH_DIR/common.sh"

SUBCOMMAND=""
TPU=${TPU_NAME:-}
ZONE=${ZONE:-}
PROJECT=""
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-}
VERSION=${TPU_VERSION:-tpu-ubuntu2204-base}
CONFIG=${CONFIG:-}
WORKDIR=${WORKDIR:-}
PYTHON=python3
SPOT=0
QUEUED=0
RESTART=0
MAX_RESTARTS=20
FOLLOW=1
DRY_RUN=0
FLAGS=()

while (($#)); do
  arg=$1
  shift
  case $arg in
    --) FLAGS=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    --dry_run|--dry-run) DRY_RUN=1 ;;
    --spot) SPOT=1 ;;
    --queued) QUEUED=1 ;;
    --restart_on_preemption) RESTART=1 ;;
    --no_follow) FOLLOW=0 ;;
    --tpu=*) TPU=${arg#*=} ;;
    --zone=*) ZONE=${arg#*=} ;;
    --project=*) PROJECT=${arg#*=} ;;
    --accelerator_type=*) ACCELERATOR_TYPE=${arg#*=} ;;
    --version=*) VERSION=${arg#*=} ;;
    --config=*) CONFIG=${arg#*=} ;;
    --workdir=*) WORKDIR=${arg#*=} ;;
    --python=*) PYTHON=${arg#*=} ;;
    --max_restarts=*) MAX_RESTARTS=${arg#*=} ;;
    --tpu|--zone|--project|--accelerator_type|--version|--config|--workdir|--python|--max_restarts)
      die_usage "$arg needs a value: write $arg=VALUE" ;;
    -*) die_usage "unknown option '$arg' (flags for ssl_jax.main go after '--'; see --help)" ;;
    *)
      [[ -z $SUBCOMMAND ]] || die_usage "one command at a time, got '$SUBCOMMAND' and '$arg'"
      SUBCOMMAND=$arg ;;
  esac
done

case $SUBCOMMAND in
  create|setup|run|up|logs|stop|status|delete) ;;
  "") die_usage "missing COMMAND: one of create, setup, run, up, logs, stop, status, delete (see --help)" ;;
  *) die_usage "unknown command '$SUBCOMMAND': one of create, setup, run, up, logs, stop, status, delete" ;;
esac
[[ $MAX_RESTARTS =~ ^[0-9]+$ ]] || die_usage "--max_restarts must be an integer >= 0, got '$MAX_RESTARTS'"

require() {  # require VAR...: each must be set for this command
  local var
  for var in "$@"; do
    [[ -n ${!var} ]] && continue
    case $var in
      TPU) die_usage "'$SUBCOMMAND' needs the slice name: --tpu=NAME (or TPU_NAME=NAME)" ;;
      ZONE) die_usage "'$SUBCOMMAND' needs the zone: --zone=ZONE (or ZONE=ZONE), e.g. us-central2-b" ;;
      ACCELERATOR_TYPE) die_usage "'$SUBCOMMAND' needs the slice type: --accelerator_type=TYPE (or ACCELERATOR_TYPE=TYPE), e.g. v4-32" ;;
      VERSION) die_usage "'$SUBCOMMAND' needs the TPU software version: --version=VERSION (or TPU_VERSION)" ;;
      CONFIG) die_usage "'$SUBCOMMAND' needs the config: --config=CONFIG (or CONFIG=...), e.g. configs/byol.py:imagenet" ;;
      WORKDIR) die_usage "'$SUBCOMMAND' needs the workdir: --workdir=gs://BUCKET/DIR (or WORKDIR=...)" ;;
    esac
  done
}

require TPU ZONE
case $SUBCOMMAND in
  create) require ACCELERATOR_TYPE VERSION ;;
  up) require ACCELERATOR_TYPE VERSION CONFIG WORKDIR ;;
  run)
    require CONFIG WORKDIR
    ((RESTART)) && require ACCELERATOR_TYPE VERSION
    ((RESTART && !FOLLOW)) && die_usage "--restart_on_preemption follows the run: drop --no_follow"
    ;;
esac

if [[ $SUBCOMMAND == run || $SUBCOMMAND == up ]]; then
  [[ $WORKDIR == gs://* ]] ||
    echo "$PROG: warning: --workdir=$WORKDIR is not a gs:// path: every host writes its own local copy there, and checkpoints written by all hosts together need a directory they all reach (use gs://BUCKET/DIR)" >&2
  for f in ${FLAGS[@]+"${FLAGS[@]}"}; do
    if [[ $f == --config.data.data_dir=* && ${f#*=} != gs://* ]]; then
      echo "$PROG: warning: $f is not a gs:// path: every host must find the dataset there" >&2
    fi
  done
fi

if ((!DRY_RUN)) && ! command -v gcloud >/dev/null 2>&1; then
  echo "$PROG: error: gcloud not found on PATH: install the Google Cloud SDK (https://cloud.google.com/sdk/docs/install) and log in (gcloud auth login), or pass --dry_run to print the gcloud commands" >&2
  exit 1
fi

# --- gcloud ------------------------------------------------------------------------------
gc() {  # gc ARGS...: run `gcloud ARGS...` (echoed on stderr), or print it with --dry_run
  local line=gcloud w
  for w in "$@" ${PROJECT:+"--project=$PROJECT"}; do line+=" $(quote "$w")"; done
  if ((DRY_RUN)); then
    printf '%s\n' "$line"
    return 0
  fi
  echo "+ $line" >&2
  gcloud "$@" ${PROJECT:+"--project=$PROJECT"}
}

note() {  # a step that is not a gcloud command: a comment line in the dry run
  if ((DRY_RUN)); then printf '# %s\n' "$*"; else echo "$PROG: $*" >&2; fi
}

on_workers() {  # on_workers WORKERS COMMAND: run a shell command over ssh on those workers
  gc compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker="$1" --command="$2"
}

slice_state() {  # READY, PREEMPTED, CREATING, ... or MISSING
  local state
  state=$(gcloud compute tpus tpu-vm describe "$TPU" --zone="$ZONE" --format='value(state)' \
          ${PROJECT:+"--project=$PROJECT"} 2>/dev/null) || state=""
  echo "${state:-MISSING}"
}

# --- remote commands (one line each) -------------------------------------------------------
# On every worker, in the home directory; the ~ is expanded by the worker's shell.
REMOTE_DIR=ssl_jax
# shellcheck disable=SC2088
LOG='~/ssl_jax_run.log'          # the run's output
# shellcheck disable=SC2088
PIDFILE='~/ssl_jax_run.pid'      # its pid while it runs
# shellcheck disable=SC2088
EXITFILE='~/ssl_jax_run.exit'    # its exit code once it has ended

train_command() {  # the ssl_jax.main command line, quoted for the remote shell
  local cmd w
  cmd="$(quote "$PYTHON") -m ssl_jax.main --multihost $(quote "--config=$CONFIG") $(quote "--workdir=$WORKDIR")"
  for w in ${FLAGS[@]+"${FLAGS[@]}"}; do cmd+=" $(quote "$w")"; done
  printf '%s' "$cmd"
}

# shellcheck disable=SC2088
LOCK='~/ssl_jax_run.lock'        # flock'ed by the run's shell from the check to the exit code

# One run per worker: the start takes an flock on LOCK (atomic check-and-claim: two starts
# cannot both pass, as two `[ -f PIDFILE ] && kill -0` checks could), and the detached shell
# inherits it and holds it until it has written EXITFILE; the kernel drops it when that shell
# dies, so a killed run leaves no stale claim, and no pid is trusted (pid reuse). The pid file
# is written by the run's own subshell before it execs the program, so it exists (for stop
# and follow) before the program can do anything.
start_command() {  # refuse if a run is going; else start one detached, pid and exit code in files
  local inner
  inner="( echo \$BASHPID > $PIDFILE.tmp && mv -f $PIDFILE.tmp $PIDFILE && exec $(train_command) 9>&- ) & wait \$!; echo \$? > $EXITFILE.tmp; mv -f $EXITFILE.tmp $EXITFILE"
  printf '%s' "cd ~/$REMOTE_DIR || exit 1; exec 9>>$LOCK; if ! flock -n 9; then echo \"\$(hostname): a run is already going (pid \$(cat $PIDFILE 2>/dev/null)); stop it first: launch/tpu_vm.sh stop\" >&2; exit 1; fi; rm -f $PIDFILE $EXITFILE; nohup bash -c $(quote "$inner") > $LOG 2>&1 < /dev/null & echo \"\$(hostname): started\""
}

# Follow the log until the exit-code file appears; exit with that code (254: the run vanished
# without one, e.g. the VM restarted).
FOLLOW_COMMAND="for i in \$(seq 60); do [ -f $PIDFILE ] && break; sleep 1; done; [ -f $PIDFILE ] || { echo 'no run on worker 0 (no $PIDFILE): start one with launch/tpu_vm.sh run' >&2; exit 1; }; tail -n +1 -F $LOG & t=\$!; while [ ! -f $EXITFILE ]; do if ! kill -0 \"\$(cat $PIDFILE)\" 2>/dev/null; then sleep 2; [ -f $EXITFILE ] || { kill \$t; echo 'the run is gone without an exit code (VM restarted?)' >&2; exit 254; }; fi; sleep 1; done; sleep 1; kill \$t 2>/dev/null; exit \"\$(cat $EXITFILE)\""

# Signal the pid in PIDFILE only while a run holds LOCK (a pid file left by an ended run may
# name a reused pid).
STOP_COMMAND="if [ -f $PIDFILE ] && ! flock -n $LOCK true && kill -TERM \"\$(cat $PIDFILE)\" 2>/dev/null; then echo \"\$(hostname): SIGTERM sent\"; else echo \"\$(hostname): no run going\"; fi"

# --- steps -------------------------------------------------------------------------------
wait_until_active() {  # a queued resource: poll until ACTIVE
  if ((DRY_RUN)); then
    note "poll every 30 s until the state is ACTIVE:"
    gc compute tpus queued-resources describe "$TPU" --zone="$ZONE" --format='value(state.state)'
    return 0
  fi
  local state
  while :; do
    state=$(gcloud compute tpus queued-resources describe "$TPU" --zone="$ZONE" \
            --format='value(state.state)' ${PROJECT:+"--project=$PROJECT"}) || state=UNKNOWN
    case $state in
      ACTIVE) return 0 ;;
      FAILED|SUSPENDED|SUSPENDING)
        echo "$PROG: error: queued resource $TPU is $state; see: gcloud compute tpus queued-resources describe $TPU --zone=$ZONE" >&2
        return 1 ;;
    esac
    echo "$PROG: queued resource $TPU is ${state:-UNKNOWN}; checking again in 30 s (Ctrl-C stops waiting, not the request)" >&2
    sleep 30
  done
}

do_create() {
  local spot=()
  ((SPOT)) && spot=(--spot)
  if ((QUEUED)); then
    gc compute tpus queued-resources create "$TPU" --node-id="$TPU" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$VERSION" ${spot[@]+"${spot[@]}"}
    wait_until_active
  else
    gc compute tpus tpu-vm create "$TPU" --zone="$ZONE" --accelerator-type="$ACCELERATOR_TYPE" \
      --version="$VERSION" ${spot[@]+"${spot[@]}"}
  fi
}

do_delete() {
  if ((QUEUED)); then
    gc compute tpus queued-resources delete "$TPU" --zone="$ZONE" --force --quiet
  else
    gc compute tpus tpu-vm delete "$TPU" --zone="$ZONE" --quiet
  fi
}

STAGE=""
cleanup() { [[ -n $STAGE ]] && rm -rf "$STAGE" || true; }
trap cleanup EXIT

stage_checkout() {  # copy the checkout's files (no .git, no ignored files) to $STAGE/ssl_jax
  if ((DRY_RUN)); then
    STAGE=""
    note "copy $ROOT (git ls-files: tracked and untracked-but-not-ignored files) to STAGE/$REMOTE_DIR, STAGE a new temporary directory"
    STAGED=STAGE/$REMOTE_DIR
    return 0
  fi
  STAGE=$(mktemp -d "${TMPDIR:-/tmp}/ssl_jax_stage.XXXXXX")
  STAGED=$STAGE/$REMOTE_DIR
  mkdir "$STAGED"
  if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$ROOT" ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do [[ -e $ROOT/$f ]] && printf '%s\0' "$f"; done |
      (cd "$ROOT" && tar --null -T - -cf -) | tar -C "$STAGED" -xf -
  else
    (cd "$ROOT" && tar --exclude=.git --exclude=.venv --exclude=__pycache__ -cf - .) | tar -C "$STAGED" -xf -
  fi
  note "staged $ROOT in $STAGED"
}

do_setup() {
  stage_checkout
  on_workers all "rm -rf ~/$REMOTE_DIR"
  gc compute tpus tpu-vm scp --recurse "$STAGED" "$TPU:$REMOTE_DIR" --zone="$ZONE" --worker=all
  on_workers all "cd ~/$REMOTE_DIR && $(quote "$PYTHON") -m pip install -q -e . 'jax[tpu]'"
}

do_start() { on_workers all "$(start_command)"; }
do_follow() { on_workers 0 "$FOLLOW_COMMAND"; }

do_run() {
  do_start
  if ((!FOLLOW)); then
    note "started; follow worker 0's log with: launch/tpu_vm.sh logs --tpu=$TPU --zone=$ZONE"
    return 0
  fi
  if ((DRY_RUN)); then
    do_follow
    if ((RESTART)); then
      note "--restart_on_preemption: after a non-zero exit code, the slice state:"
      gc compute tpus tpu-vm describe "$TPU" --zone="$ZONE" --format='value(state)'
      note "exit 75 (or 254) and READY: the start and follow commands above again; lost ssh (255) and READY: follow again"
      note "not READY or missing (preempted): delete, create, setup (commands above), then start and follow again"
    fi
    return 0
  fi
  local rc restarts=0 state
  while :; do
    rc=0
    do_follow || rc=$?
    if ((rc == 0)); then
      echo "$PROG: the run finished (exit 0)" >&2
      return 0
    fi
    if ((!RESTART)); then
      ((rc == 75)) && echo "$PROG: exit 75: stopped by SIGTERM with a checkpoint written; run the same command again to resume" >&2
      return "$rc"
    fi
    if ((restarts >= MAX_RESTARTS)); then
      echo "$PROG: giving up after $restarts restarts (last exit code $rc)" >&2
      return "$rc"
    fi
    restarts=$((restarts + 1))
    state=$(slice_state)
    echo "$PROG: exit code $rc, slice $TPU is $state (restart $restarts of at most $MAX_RESTARTS)" >&2
    if [[ $state == READY ]]; then
      case $rc in
        75|254) do_start ;;
        255) echo "$PROG: lost the ssh connection; following the log again" >&2 ;;
        *) echo "$PROG: the run failed (exit $rc), not a preemption: not restarting" >&2; return "$rc" ;;
      esac
    else
      echo "$PROG: the slice is $state: deleting and recreating it" >&2
      do_delete || true
      do_create
      do_setup
      do_start
    fi
  done
}

case $SUBCOMMAND in
  create) do_create ;;
  setup) do_setup ;;
  run) do_run ;;
  up) do_create; do_setup; do_run ;;
  logs) do_follow ;;
  stop) on_workers all "$STOP_COMMAND" ;;
  status)
    if ((QUEUED)); then gc compute tpus queued-resources describe "$TPU" --zone="$ZONE"; fi
    gc compute tpus tpu-vm describe "$TPU" --zone="$ZONE" ;;
  delete) do_delete ;;
esac
