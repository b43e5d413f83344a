#!/usr/bin/env bash
# The two benchmark protocols of DESIGN.md section 8 on the offline dev corpus, on one GPU:
# the speed protocol once and the quality protocol twice, then a comparison table.
#
#   tools/dev_protocols.sh DATA_DIR [--name=value ...]
#
# DATA_DIR holds fineweb_val_000000.bin and fineweb_train_*.bin, or their .xz files (decompressed
# next to them first). Extra overrides go to every run and come last, so they win.
set -euo pipefail
if [ $# -lt 1 ] || [ "$1" = "--help" ] || [ "$1" = "-h" ]; then
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
data_dir=$1
shift
for packed in "$data_dir"/*.bin.xz; do
  if [ -e "$packed" ] && [ ! -e "${packed%.xz}" ]; then
    xz -dc "$packed" > "${packed%.xz}.partial" && mv "${packed%.xz}.partial" "${packed%.xz}"
  fi
done
stamp=$(date +%Y%m%d-%H%M%S)
common=(--train_files="$data_dir/fineweb_train_*.bin" --val_files="$data_dir/fineweb_val_*.bin" --val_tokens=2097152)
torchrun --standalone --nproc_per_node=1 train_gpt.py "${common[@]}" \
  --num_iterations=100 --val_loss_every=25 --run_id="speed-$stamp" "$@"
for run in 1 2; do
  torchrun --standalone --nproc_per_node=1 train_gpt.py "${common[@]}" \
    --num_iterations=300 --batch_size=65536 --val_loss_every=100 --seed="$run" --run_id="quality$run-$stamp" "$@"
done
python records/compare.py "logs/speed-$stamp.txt" "logs/quality1-$stamp.txt" "logs/quality2-$stamp.txt"
