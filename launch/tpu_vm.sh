#!/usr/bin/env bash
# Run an ssl_jax config on every host of a Cloud TPU VM slice (one process per host).
#   launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [extra flags...]
#   launch/tpu_vm.sh my-v4-64 us-central2-b configs/byol.py:imagenet gs://bucket/byol \
#       --config.data.data_dir=gs://bucket/tfds
# Copies this checkout to every host, installs it, and starts the same command everywhere;
# jax.distributed.initialize() (--multihost) finds the coordinator from the TPU metadata.
# WORKDIR should be a gs:// path reachable by every host: rerunning resumes from it.
set -euo pipefail
TPU_NAME=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
HERE="$(cd "$(dirname "$0")/.." && pwd)"
gcloud compute tpus tpu-vm scp --recurse --zone="$ZONE" --worker=all "$HERE" "$TPU_NAME":~/ssl_jax_src
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  set -e
  cd ~/ssl_jax_src
  python3 -m pip install -q -e . 'jax[tpu]'
  python3 -m ssl_jax.main --multihost --config=$CONFIG --workdir=$WORKDIR $*
"
