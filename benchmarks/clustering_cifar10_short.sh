#!/usr/bin/env bash
# Short CIFAR-10 runs of the four clustering methods (DeepCluster, SeLa, DeepCluster-v2,
# DeeperCluster): the first 10k training images, ResNet-18 x1/4, 3 epochs, each `cifar10` preset
# otherwise; kNN / linear against random init from the run, k-means NMI from the clustering
# protocol. DeepCluster's run is stopped with SIGTERM inside epoch 2 and resumed.
# Usage: bash benchmarks/clustering_cifar10_short.sh [TFDS_DATA_DIR (../shared/tfds)] [OUT_DIR (/tmp)]
set -u
cd "$(dirname "$0")/.."
DATA="${1:-$(cd .. && pwd)/shared/tfds}"
OUT="${2:-/tmp}"
COMMON=(--config.data.data_dir="$DATA" "--config.data.train_split=train[:10000]" --config.model.width=0.25
        --config.num_epochs=3 --config.eval.every_steps=0 --config.eval.compare_random_init=True
        --config.checkpoint.every_steps=20 --config.log_every_steps=10)
for m in deepcluster sela deepcluster_v2 deepercluster; do
  extra=()
  [ "$m" = deepercluster ] && extra=(--config.deepercluster.reassign_epochs=1)
  [ "$m" = deepcluster_v2 ] && extra=(--config.optimizer.warmup_epochs=0.5)  # the preset's 10 exceed 3 epochs
  W="$OUT/cifar_$m"
  rm -rf "$W"
  start=$(date +%s)
  if [ "$m" = deepcluster ]; then
    python -m ssl_jax.main --config=configs/$m.py:cifar10 "${COMMON[@]}" "${extra[@]}" --workdir="$W" > "$W.log1" 2>&1 &
    pid=$!
    while ! grep -q "^step 60/" "$W.log1" 2>/dev/null; do sleep 2; kill -0 $pid 2>/dev/null || break; done
    kill -TERM $pid; wait $pid; echo "first run: exit $? (75 = preempted, checkpoint saved)"
  fi
  python -m ssl_jax.main --config=configs/$m.py:cifar10 "${COMMON[@]}" "${extra[@]}" --workdir="$W" > "$W.log" 2>&1
  echo "$m: exit $?, $(( $(date +%s) - start )) s"
  grep -A4 "Results after" "$W.log"
  for net in default random_init; do
    python -m ssl_jax.evaluate --config=configs/eval/clustering.py --workdir="$W" --config.data.data_dir="$DATA" \
      --config.network=$net 2>&1 | grep nmi | sed "s/^/  $net /"
  done
done
