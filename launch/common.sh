# shellcheck shell=bash
# Shell helpers shared by the launchers run from a checkout (sourced; sets nothing else).
# launch/slurm_gpu.sbatch keeps its own copy: sbatch runs a spooled copy of the script, away
# from this directory.

die_usage() {  # one error line naming the fix, exit 2 (PROG: the script's name)
  echo "$PROG: error: $*" >&2
  exit 2
}

# shell-quote one word (the style of Python's shlex.quote)
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}
