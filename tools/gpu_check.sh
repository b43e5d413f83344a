#!/usr/bin/env bash
# The first GPU check of train_gpt.py, as one command per device call; everything lands under $OUT.
#
#   tools/gpu_check.sh [options] PHASES DATA_DIR
#   bash tools/gpu_check.sh --budget 570 1,2,3 devdata   # first device call (about 6-8 min)
#   bash tools/gpu_check.sh 4 devdata                    # second device call (about 3-6 min)
#   tools/gpu_check.sh --dry-run 1,2,3,4 data/sample    # the same on a CPU with a tiny model (tests)
#
# PHASES is a comma list of:
#   1  versions, nvidia-smi; a 20-step smoke run of the speed protocol with a checkpoint at step 10, then
#      one resume from it for steps 11-20 (resume_check.txt: its losses beside the uninterrupted ones);
#      the checkpoint is deleted at the end (its size and save time go into the summary)
#   2  the speed protocol once (DESIGN.md 8)
#   3  tools/profile_step.py with the speed protocol's shapes (profile.txt)
#   4  the quality protocol twice, seeds 1 and 2
# DATA_DIR holds fineweb_train_*.bin and fineweb_val_*.bin (or sample_*), or their .bin.xz, which are
# decompressed next to them first (to a temporary name, then renamed).
#
# Options:
#   --dry-run            on the CPU, tiny overrides appended last (they win), shorter limits
#   --workdir DIR        where the trainer runs and writes logs/ (default: the repository root)
#   --budget SECONDS     cut phase limits so the whole script ends within this time
#   --train_pattern P, --val_pattern P   shard file names inside DATA_DIR (default: fineweb_*, else sample_*)
#   -h, --help
# Output ($OUT, default ./gpu_check_out): summary.md (rewritten after every phase), phases.tsv,
# phase<N>.log (each phase's console), logs/<run>.txt (trainer logs) and logs/<run>.console.txt (console,
# each line prefixed by its epoch time; first line "# launch <epoch>"), versions.txt, nvidia-smi.txt,
# resume_check.txt, profile.txt, compare_phase<N>.txt. Each phase runs under its own `timeout`; a failed
# or timed-out phase is recorded (exit status, last lines) and the next one runs.
# Environment: PYTHON (default: python3, else python, the first that imports torch), TORCHRUN (default:
# $PYTHON -m torch.distributed.run), LIMIT_1 .. LIMIT_4 (seconds per phase; defaults 270, 180, 150, 510,
# in a dry run 120, 60, 60, 210).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$REPO/tools/gpu_check.sh"

usage() { sed -n '2,/^set -euo/p' "$SELF" | sed '$d' | sed 's/^# \{0,1\}//'; }
now() { date +%s.%N; }
seconds_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------------------------------------------------
# One training run: trainer log copied to $OUT/logs/, console timestamped line by line.

stamp_lines() {
  "$PYTHON" -u -c 'import sys, time
for line in sys.stdin:
    print(f"{time.time():.3f} {line}", end="", flush=True)'
}

train_run() {  # train_run RUN_ID OVERRIDE...  (SCRIPT=path to run instead of train_gpt.py)
  local run_id=$1 rc
  shift
  local console="$OUT/logs/$run_id.console.txt"
  echo "# launch $(now)" > "$console"
  echo "[$(date +%T)] run $run_id"
  set +e
  (cd "$WORKDIR" && $TORCHRUN --standalone --nproc_per_node=1 "${SCRIPT:-$REPO/train_gpt.py}" \
    --train_files="$TRAIN_GLOB" --val_files="$VAL_GLOB" --run_id="$run_id" "$@") 2>&1 | stamp_lines >> "$console"
  rc=${PIPESTATUS[0]}
  set -e
  if [ -f "$WORKDIR/logs/$run_id.txt" ]; then cp "$WORKDIR/logs/$run_id.txt" "$OUT/logs/"; fi
  echo "[$(date +%T)] run $run_id: exit status $rc"
  if [ "$rc" -ne 0 ]; then tail -n 15 "$console"; fi
  return "$rc"
}

# Training-loss and validation-loss values of a log, from step $2 on (train) / at step $2 and later (val).
losses_from() {
  grep -oE '^step:[0-9]+/[0-9]+ (train|val)_loss:[^ ]+' "$1" |
    awk -F'[:/ ]' -v k="$2" '($4 == "train_loss" && $2 > k) || ($4 == "val_loss" && $2 >= k)'
}

# ---------------------------------------------------------------------------------------------------------
# The phases; each runs in its own process under `timeout` (tools/gpu_check.sh --phase N).

SPEED=(--num_iterations=100 --val_loss_every=25 --val_tokens=2097152)

phase1() {
  {
    echo "python: $("$PYTHON" -c 'import sys; print(sys.version)')"
    "$PYTHON" -c 'import torch; print("torch:", torch.__version__, "CUDA:", torch.version.cuda,
"cuda available:", torch.cuda.is_available(),
"device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")'
    "$PYTHON" -c 'import triton; print("triton:", triton.__version__)' 2>&1 || true
    echo "torchrun: $(command -v "${TORCHRUN%% *}")"
  } > "$OUT/versions.txt" 2>&1 || true
  cat "$OUT/versions.txt"
  {
    nvidia-smi && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
  } > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi: not available" >> "$OUT/nvidia-smi.txt"
  cat "$OUT/nvidia-smi.txt"
  local smoke="$PREFIX-smoke" resumed="$PREFIX-resume" rc=0
  local checkpoint
  checkpoint="$WORKDIR/logs/$smoke/step_$(printf %06d "$CKPT_STEP").pt"
  train_run "$smoke" "${SPEED[@]}" --num_iterations=20 --val_loss_every=10 --checkpoint_every=10 \
    "${TINY[@]}" "${TINY_1[@]}" || rc=$?
  if [ -f "$checkpoint" ]; then
    echo "checkpoint: $checkpoint $(stat -c %s "$checkpoint") bytes" | tee "$OUT/checkpoint.txt"
    train_run "$resumed" "${SPEED[@]}" --num_iterations=20 --val_loss_every=10 --checkpoint_every=0 \
      --resume="$checkpoint" "${TINY[@]}" || rc=$?
  else
    echo "no checkpoint $checkpoint: no resume"
    [ "$rc" -ne 0 ] || rc=1
  fi
  local a="$OUT/logs/$smoke.txt" b="$OUT/logs/$resumed.txt" verdict
  {
    echo "resume check: $smoke (uninterrupted) vs $resumed (resumed from its step-$CKPT_STEP checkpoint)"
    grep -h '^checkpoint:' "$a" 2>/dev/null || echo "no checkpoint line in $a"
    cat "$OUT/checkpoint.txt" 2>/dev/null || true
    echo
    echo "losses after step $CKPT_STEP (train) and from step $CKPT_STEP (val); diff uninterrupted resumed:"
    if [ -f "$a" ] && [ -f "$b" ] && [ -n "$(losses_from "$b" "$CKPT_STEP")" ]; then
      if diff <(losses_from "$a" "$CKPT_STEP") <(losses_from "$b" "$CKPT_STEP"); then
        verdict="losses: equal ($(losses_from "$a" "$CKPT_STEP" | wc -l) lines)"
      else  # not bitwise: how far apart (a finding, not a failure of the phase)
        verdict="losses: DIFFER, max |difference| $(paste -d ' ' <(losses_from "$a" "$CKPT_STEP") \
          <(losses_from "$b" "$CKPT_STEP") | awk -F'[: ]' '{ d = $4 - $8; d = d < 0 ? -d : d; if (d > m) m = d }
          END { printf "%.4f", m }') -> check"
      fi
      echo "resumed:"
      losses_from "$b" "$CKPT_STEP"
    else
      verdict="losses: MISSING (a log or its loss lines are missing)"
    fi
    echo "$verdict"
    echo
    "$PYTHON" "$REPO/records/compare.py" "$a" "$b" 2>&1 || true
  } > "$OUT/resume_check.txt"
  cat "$OUT/resume_check.txt"
  case "$verdict" in "losses: MISSING"*) [ "$rc" -ne 0 ] || rc=1 ;; esac
  return "$rc"
}

phase2() {
  train_run "$PREFIX-speed" "${SPEED[@]}" "${TINY[@]}"
}

phase3() {
  local rc=0
  SCRIPT="$REPO/tools/profile_step.py" train_run "$PREFIX-profile" --out="$OUT/profile.txt" \
    "${PROFILE_OPTIONS[@]}" "${SPEED[@]}" "${TINY[@]}" || rc=$?
  if [ -f "$OUT/profile.txt" ]; then cat "$OUT/profile.txt"; elif [ "$rc" -eq 0 ]; then rc=1; fi
  return "$rc"
}

phase4() {
  local rc=0 seed run_limit=$(( (PHASE_LIMIT - 90) / 2 ))
  for seed in 1 2; do  # each run under its own limit, so a stuck first run leaves time for the second
    timeout -k 40 "$run_limit" bash "$SELF" --run-quality "$seed" || rc=$?
  done
  "$PYTHON" "$REPO/records/compare.py" "$OUT/logs/$PREFIX-quality-s1.txt" "$OUT/logs/$PREFIX-quality-s2.txt" || true
  return "$rc"
}

run_quality() {
  train_run "$PREFIX-quality-s$1" --num_iterations=300 --batch_size=65536 --val_loss_every=100 \
    --val_tokens=2097152 --seed="$1" "${TINY[@]}" "${TINY_4[@]}"
}

# ---------------------------------------------------------------------------------------------------------
# Internal entry points: one phase (or one quality run) in its own process, under the caller's timeout.

if [ "${1:-}" = "--phase" ]; then
  TINY=(${TINY_STR}) TINY_1=(${TINY_1_STR}) TINY_4=(${TINY_4_STR}) PROFILE_OPTIONS=(${PROFILE_STR})
  "phase$2"
  exit $?
fi
if [ "${1:-}" = "--run-quality" ]; then
  TINY=(${TINY_STR}) TINY_4=(${TINY_4_STR})
  run_quality "$2"
  exit $?
fi

# ---------------------------------------------------------------------------------------------------------
# Main: options, data, then each phase under its limit, the summary after each.

dry_run=0 budget="" train_pattern="" val_pattern="" WORKDIR=$REPO
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift ;;
    --workdir) WORKDIR=$2; shift 2 ;;
    --budget) budget=$2; shift 2 ;;
    --train_pattern) train_pattern=$2; shift 2 ;;
    --val_pattern) val_pattern=$2; shift 2 ;;
    -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
if [ $# -ne 2 ]; then
  echo "error: expected PHASES and DATA_DIR (see --help)" >&2
  exit 2
fi
phases=$1
data_dir=$2
if ! [[ $phases =~ ^[1-4](,[1-4])*$ ]]; then
  echo "error: PHASES $phases: expected a comma list of 1, 2, 3, 4" >&2
  exit 2
fi
if [ ! -d "$data_dir" ]; then
  echo "error: DATA_DIR $data_dir: no such directory" >&2
  exit 2
fi
data_dir=$(cd "$data_dir" && pwd)
# The interpreter that has PyTorch: on the GPU image that is python3, and a `python` there may be another one.
python_with_torch() {
  local name
  for name in python3 python; do
    if command -v "$name" > /dev/null && "$name" -c 'import torch' 2> /dev/null; then
      command -v "$name"
      return 0
    fi
  done
  return 1
}
if [ -z "${PYTHON:-}" ] && ! PYTHON=$(python_with_torch); then
  echo "error: neither python3 nor python on PATH imports torch; set PYTHON=/path/to/python" >&2
  exit 2
fi
TORCHRUN=${TORCHRUN:-"$PYTHON -m torch.distributed.run"}  # torchrun of that interpreter, on PATH or not
mkdir -p "$WORKDIR"
WORKDIR=$(cd "$WORKDIR" && pwd)
OUT=${OUT:-./gpu_check_out}
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)

for packed in "$data_dir"/*.bin.xz; do
  if [ -e "$packed" ] && [ ! -e "${packed%.xz}" ]; then
    echo "decompressing $packed"
    xz -dc "$packed" > "${packed%.xz}.partial" && mv "${packed%.xz}.partial" "${packed%.xz}"
  fi
done
if [ -z "$train_pattern" ]; then
  if compgen -G "$data_dir/fineweb_train_*.bin" > /dev/null; then
    train_pattern="fineweb_train_*.bin" val_pattern=${val_pattern:-"fineweb_val_*.bin"}
  else
    train_pattern="sample_train_*.bin" val_pattern=${val_pattern:-"sample_val_*.bin"}
  fi
fi
val_pattern=${val_pattern:-"fineweb_val_*.bin"}
TRAIN_GLOB="$data_dir/$train_pattern" VAL_GLOB="$data_dir/$val_pattern"
for glob in "$TRAIN_GLOB" "$VAL_GLOB"; do
  if ! compgen -G "$glob" > /dev/null; then
    echo "error: no shard matches $glob (see --train_pattern / --val_pattern)" >&2
    exit 2
  fi
done

PREFIX="gpucheck-$(date +%Y%m%d-%H%M%S)"
if [ "$dry_run" = 1 ]; then
  # One thread per process: on a small CPU, OpenMP threads spinning beside other processes slow a step ~6x.
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  TINY_STR="--sequence_length=256 --batch_size=256 --val_tokens=256 --model_dim=32 --num_heads=2 --num_kv_heads=2"
  TINY_STR+=" --mlp_dim=64 --num_iterations=4 --val_loss_every=0 --timing_warmup_steps=1"
  TINY_1_STR="--checkpoint_every=2" TINY_4_STR="--num_iterations=3" CKPT_STEP=2
  PROFILE_STR="--warmup_steps=1 --profile_steps=1 --at_step=0"
  limits=(0 "${LIMIT_1:-120}" "${LIMIT_2:-60}" "${LIMIT_3:-60}" "${LIMIT_4:-210}")
else
  TINY_STR="" TINY_1_STR="" TINY_4_STR="" CKPT_STEP=10
  PROFILE_STR="--warmup_steps=3 --profile_steps=3 --at_step=50"  # at step 50 of 100: the mean window, 7 blocks
  limits=(0 "${LIMIT_1:-270}" "${LIMIT_2:-180}" "${LIMIT_3:-150}" "${LIMIT_4:-510}")
fi
export REPO SELF OUT WORKDIR TORCHRUN PYTHON TRAIN_GLOB VAL_GLOB PREFIX TINY_STR TINY_1_STR TINY_4_STR CKPT_STEP
export PROFILE_STR

names=(- "smoke, checkpoint and resume" "speed protocol" "profile" "quality protocol x2")
{
  echo "prefix=$PREFIX"
  echo "dry_run=$dry_run"
  echo "phases=$phases"
  echo "data=$TRAIN_GLOB $VAL_GLOB"
  echo "workdir=$WORKDIR"
  echo "python=$PYTHON"
  echo "torchrun=$TORCHRUN"
  echo "started=$(date -Is)"
} > "$OUT/config.txt"
: > "$OUT/phases.tsv"
started=$(now)
summarize() { "$PYTHON" "$REPO/tools/gpu_check_summary.py" "$OUT" || echo "(summary failed)"; }
overall=0
for phase in ${phases//,/ }; do
  limit=${limits[$phase]}
  if [ -n "$budget" ]; then
    left=$(awk -v b="$budget" -v s="$(seconds_since "$started")" 'BEGIN { printf "%d", b - s - 10 }')
    if [ "$left" -lt "$limit" ]; then limit=$left; fi
  fi
  if [ "$limit" -lt 5 ]; then
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$phase" "${names[$phase]}" "skipped (no time left)" - 0 "$limit" \
      >> "$OUT/phases.tsv"
    summarize > /dev/null
    overall=1
    continue
  fi
  echo "=== [$(date +%T)] phase $phase: ${names[$phase]} (limit ${limit}s)"
  phase_started=$(now)
  set +e
  PHASE_LIMIT=$limit timeout -k 40 "$limit" bash "$SELF" --phase "$phase" > "$OUT/phase$phase.log" 2>&1
  rc=$?
  set -e
  wall=$(seconds_since "$phase_started")
  case $rc in
    0) status=ok ;;
    124|137) status="timed out" ;;
    *) status="failed rc $rc" ;;
  esac
  if [ "$rc" -ne 0 ]; then overall=1; fi
  for log in "$WORKDIR"/logs/"$PREFIX"-*.txt; do  # also the logs of runs the timeout killed
    if [ -f "$log" ] && [ ! -e "$OUT/logs/$(basename "$log")" ]; then cp "$log" "$OUT/logs/"; fi
  done
  # Phase 1's checkpoints (a few GB): never kept, never copied; removed here also after a timeout.
  rm -rf "$WORKDIR/logs/$PREFIX-smoke" "$WORKDIR/logs/$PREFIX-resume"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$phase" "${names[$phase]}" "$status" "$rc" "$wall" "$limit" >> "$OUT/phases.tsv"
  echo "=== [$(date +%T)] phase $phase: $status in ${wall}s"
  if [ "$rc" -ne 0 ]; then tail -n 20 "$OUT/phase$phase.log"; fi
  summarize > /dev/null
done
cat "$OUT/summary.md"
exit "$overall"
