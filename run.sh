#!/usr/bin/env bash
# Command one: the main job.
#   GPU machine: a record-configuration run on every visible GPU (FineWeb shards in data/fineweb10B/).
#   CPU only:    a small model trained for a few minutes on the bundled sample (data/sample/).
# Extra arguments are hyperparameter overrides, e.g. ./run.sh --num_iterations=100
set -euo pipefail
cd "$(dirname "$0")"
# GPUs to use: those CUDA_VISIBLE_DEVICES names when it is set (empty, -1 or none: no GPU), else all nvidia-smi lists.
num_gpus=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  if [ -z "${CUDA_VISIBLE_DEVICES+set}" ]; then
    num_gpus=$(nvidia-smi -L | grep -c '^GPU ' || true)
  else
    case "$CUDA_VISIBLE_DEVICES" in
      "" | -1 | none) echo "CUDA_VISIBLE_DEVICES='$CUDA_VISIBLE_DEVICES' hides every GPU." ;;
      *) IFS=, read -ra visible_gpus <<<"$CUDA_VISIBLE_DEVICES"; num_gpus=${#visible_gpus[@]} ;;
    esac
  fi
fi
if [ "$num_gpus" -gt 0 ]; then
  if ! compgen -G "data/fineweb10B/fineweb_train_*.bin" >/dev/null; then
    echo "No FineWeb shards in data/fineweb10B/. Download them (about 2 GB) with:" >&2
    echo "    python data/cached_fineweb10B.py 9" >&2
    exit 1
  fi
  # torchrun passes a stop signal on to its ranks but kills them 30 s later (torch < 2.12), often before the
  # step and checkpoint of a graceful stop are done. So torchrun runs in a session of its own, which a Ctrl-C,
  # a closed terminal or a kill of this script does not reach, and this script passes each such signal
  # straight to the ranks (to torchrun only before it has started them), then waits for torchrun to end.
  setsid torchrun --standalone --nproc_per_node="$num_gpus" train_gpt.py "$@" &
  torchrun_pid=$!
  pass_on() {
    kill -s "$1" $(pgrep -P "$torchrun_pid") 2>/dev/null || kill -s "$1" "$torchrun_pid" 2>/dev/null || true
  }
  trap 'pass_on INT' INT
  trap 'pass_on TERM' TERM
  trap 'pass_on HUP' HUP
  while :; do  # wait returns early whenever a trapped signal arrives
    status=0
    wait "$torchrun_pid" || status=$?
    kill -0 "$torchrun_pid" 2>/dev/null || exit "$status"
  done
fi
echo "No GPU: training a small demo model on the CPU with the bundled sample (data/sample/, King James Bible)."
./setup_cpu.sh
exec .venv/bin/python train_gpt.py \
  --train_files='data/sample/sample_train_*.bin' --val_files='data/sample/sample_val_*.bin' \
  --sequence_length=512 --batch_size=1024 --val_tokens=4096 \
  --model_dim=128 --num_heads=2 --num_kv_heads=2 --mlp_dim=512 \
  --num_iterations=60 --val_loss_every=20 --sample_at_end=true "$@"
