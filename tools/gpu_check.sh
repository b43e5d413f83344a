#!/usr/bin/env bash
# The first GPU check of train_gpt.py: two device calls of one command each (README.md, DESIGN.md 9).
#
#   tools/gpu_check.sh [options] PHASES DATA_DIR
#   tools/gpu_check.sh --dry-run 1,2,3,4 data/sample    # the same on a CPU with a tiny model (the tests)
#
# The plan for a session's 15 device-minutes (machine start, both calls, idle time, all counted):
#   machine start                                                                  60-120 s
#   call 1, timeout_s 390:  bash tools/gpu_check.sh --budget 360 1,2 devdata          about 300 s
#   call 2, sent at once while the machine is warm (the compile cache is reused), timeout_s B + 30:
#           bash tools/gpu_check.sh --budget B 3,4 devdata     B = min(300, budget_left_s - 60)
#   give_back as soon as call 2 returns.
# 120 + 390 + 330 = 840 s: 60 s in reserve for idle seconds and transfers. A call 1 that fails fast (its
# smoke run logs no step: about 2-3 min) can be rerun once; B then shrinks to what status leaves (about
# 150 s: one or two quality runs; skip call 2 below 120). A call 1 that ran long is not rerun: its archive
# says what happened.
#
# PHASES is a comma list of, in this order:
#   1  versions, nvidia-smi; a smoke run of the speed protocol's shapes (8 steps) with a checkpoint at step 4,
#      then a resume from it for steps 5-8: the resume check compares its losses with the uninterrupted
#      run's (exact on a CPU; on a GPU within gpu_check_summary.py's RESUME_TOLERANCE)
#   2  the speed protocol once (DESIGN.md 8)
#   3  the quality protocol twice, seeds 1 and 2
#   4  tools/profile_step.py with the speed protocol's shapes
# A run that logs no training step stops the check there (fail fast): every later run would spend another
# compilation on the same error. Its phase reads "failed", the later ones "skipped", with the reason.
# DATA_DIR holds fineweb_train_*.bin and fineweb_val_*.bin (or sample_*), or their .bin.xz, which are
# decompressed next to them first (xz, or Python's lzma where the image has no xz).
#
# Options:
#   --budget SECONDS     the whole script ends within this many seconds of its start: each phase's limit is
#                        cut to what is left less the kill grace (20 s) and the final summary's margin (15 s);
#                        a phase with less than 30 s left is skipped
#   --dry-run            on the CPU, tiny overrides appended last (they win), shorter limits and grace
#   --workdir DIR        where the trainer runs and writes logs/ (default: the repository root)
#   --train_pattern P, --val_pattern P   shard file names inside DATA_DIR (default: fineweb_*, else sample_*)
#   -h, --help
# Each run has a deadline: then it gets SIGINT (the trainer finishes its step and logs "stopping:"), and
# SIGKILL 20 s later. SIGINT, SIGTERM or SIGHUP to this script are passed to the running trainer the same
# way; no run starts after one. Console lines are timestamped by a process that ignores these signals, so
# it outlives the trainer and keeps its last lines.
# Output: $OUT (default ./gpu_check_out; must be empty or new) receives three files, rewritten after every
# phase, so a call cut short still returns the last phase's: summary.md (per phase: status, wall time,
# compare.py's tables, peak memory, launch to first step, checkpoint, resume check, profile, the reference
# figures beside them, flagged "check" where off), phases.tsv (phase, name, status, exit status, wall s,
# limit s, note), and gpu_check.tar.gz with everything (gpu_check/: the same two, config.txt,
# versions.txt, nvidia-smi.txt, phase<N>.log, logs/<run>.txt and logs/<run>.console.txt (each line prefixed
# by its epoch time; first line "# launch <epoch>"), checkpoint.txt, resume_check.txt, profile.txt,
# compare_phase<N>.txt; a file over 4 MiB keeps its first and last 2 MiB). The files are written in a
# scratch folder under $TMPDIR (default /tmp) first; its path is printed.
# Environment: PYTHON (default: python3, else python, the first that imports torch), TORCHRUN (default:
# $PYTHON -m torch.distributed.run), TRAINER (default: train_gpt.py; the tests put a stand-in there),
# LIMIT_1 .. LIMIT_4 (seconds per phase; defaults 240, 200, 260, 120; in a dry run 120, 60, 210, 60).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$REPO/tools/gpu_check.sh"
# The budget clock is bash's SECONDS: it counts from the start of this script.

usage() { sed -n '2,/^set -euo/p' "$SELF" | sed '$d' | sed 's/^# \{0,1\}//'; }
now() { date +%s.%N; }

# ---------------------------------------------------------------------------------------------------------
# One training run: its console timestamped line by line, its log copied to $WORK/logs/, stopped at a deadline.

RUNNING=""      # the pid of the running trainer's `timeout`, for the signal trap
STOP_REASON=""  # set: no further run starts (a run logged no step, or a signal came)
INTERRUPTED=""  # the name of the signal this script received
TIMED_OUT=0     # a run of the current phase reached its deadline

on_signal() {
  INTERRUPTED=$1
  STOP_REASON="interrupted by SIG$1"
  if [ -n "$RUNNING" ]; then kill -INT "$RUNNING" 2> /dev/null || true; fi  # timeout passes it on
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
trap 'on_signal HUP' HUP

wait_for() {  # wait_for PID: its exit status in WAIT_STATUS, also when a trap interrupted the wait
  while :; do
    wait "$1" && WAIT_STATUS=0 || WAIT_STATUS=$?
    kill -0 "$1" 2> /dev/null || break
  done
  if [ "$WAIT_STATUS" -gt 128 ]; then  # perhaps the trap's status: the process's own is still kept
    local kept=0
    wait "$1" 2> /dev/null || kept=$?
    if [ "$kept" -ne 127 ]; then WAIT_STATUS=$kept; fi
  fi
}

stamp_lines() {  # run with &: ignores INT, TERM and HUP, and ends when the trainer's output does
  trap '' INT TERM HUP
  exec "$PYTHON" -u -c 'import sys, time
for line in sys.stdin:
    print(f"{time.time():.3f} {line}", end="", flush=True)'
}

logged_a_step() { grep -qE '^step:[0-9]+/[0-9]+ train_loss:' "$1" 2> /dev/null; }

train_run() {  # train_run DEADLINE RUN_ID OVERRIDE...  (SCRIPT: the file torchrun runs instead of $TRAINER)
  local deadline=$1 run_id=$2 rc stamper
  shift 2
  if [ -n "$STOP_REASON" ]; then
    echo "run $run_id: not started ($STOP_REASON)"
    return 1
  fi
  local limit=$((deadline - SECONDS)) console="$WORK/logs/$run_id.console.txt" fifo="$WORK/.console"
  if [ "$limit" -lt 1 ]; then
    echo "run $run_id: not started (its phase's limit is reached)"
    TIMED_OUT=1
    return 124
  fi
  echo "# launch $(now)" > "$console"
  echo "[$(date +%T)] run $run_id (limit ${limit}s)"
  mkfifo "$fifo"
  stamp_lines < "$fifo" >> "$console" &
  stamper=$!
  (cd "$WORKDIR" && exec timeout -s INT -k "$GRACE" "$limit" $TORCHRUN --standalone --nproc_per_node=1 \
    "${SCRIPT:-$TRAINER}" --train_files="$TRAIN_GLOB" --val_files="$VAL_GLOB" --run_id="$run_id" "$@") \
    > "$fifo" 2>&1 &
  RUNNING=$!
  wait_for "$RUNNING"
  rc=$WAIT_STATUS RUNNING=""
  # The stamper ends when every writer has closed the console; a straggler (a compile worker) gets 10 s.
  for _ in $(seq 50); do kill -0 "$stamper" 2> /dev/null && sleep 0.2 || break; done
  kill -KILL "$stamper" 2> /dev/null || true
  wait "$stamper" 2> /dev/null || true
  rm -f "$fifo"
  if [ -f "$WORKDIR/logs/$run_id.txt" ]; then cp "$WORKDIR/logs/$run_id.txt" "$WORK/logs/"; fi
  echo "[$(date +%T)] run $run_id: exit status $rc"
  case $rc in 124|137) TIMED_OUT=1 ;; esac  # timeout's statuses: INT at the deadline, KILL after the grace
  if [ "$rc" -ne 0 ]; then tail -n 15 "$console"; fi
  if ! logged_a_step "$WORK/logs/$run_id.txt" && [ -z "$STOP_REASON" ]; then
    STOP_REASON="run $run_id logged no training step (exit status $rc; its console: logs/$run_id.console.txt):"
    STOP_REASON+=" every later run would spend another compilation on the same error"
  fi
  return "$rc"
}

# ---------------------------------------------------------------------------------------------------------
# The phases, in the main shell (so the trap reaches their runs); each writes $WORK/phase<N>.log and ends
# by DEADLINE (+ GRACE).

SPEED=(--num_iterations=100 --val_loss_every=25 --val_tokens=2097152)
QUALITY=(--num_iterations=300 --batch_size=65536 --val_loss_every=100 --val_tokens=2097152)

phase1() {
  {
    echo "python: $("$PYTHON" -c 'import sys; print(sys.version)')"
    "$PYTHON" -c 'import torch; print("torch:", torch.__version__, "CUDA:", torch.version.cuda,
"cuda available:", torch.cuda.is_available(),
"device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")'
    "$PYTHON" -c 'import triton; print("triton:", triton.__version__)' 2>&1 || true
    echo "torchrun: $TORCHRUN"
    echo "commit: $(git -C "$REPO" rev-parse HEAD 2> /dev/null || echo "no git")"
  } > "$WORK/versions.txt" 2>&1 || true
  cat "$WORK/versions.txt"
  {
    nvidia-smi && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
  } > "$WORK/nvidia-smi.txt" 2>&1 || echo "nvidia-smi: not available" >> "$WORK/nvidia-smi.txt"
  cat "$WORK/nvidia-smi.txt"
  local smoke="$PREFIX-smoke" rc=0 checkpoint
  checkpoint="$WORKDIR/logs/$smoke/step_$(printf %06d "$CKPT_STEP").pt"
  train_run "$DEADLINE" "$smoke" "${SPEED[@]}" "${TINY[@]}" "${SMOKE[@]}" --checkpoint_every="$CKPT_STEP" || rc=$?
  if [ -f "$checkpoint" ]; then
    echo "checkpoint: $checkpoint $(stat -c %s "$checkpoint") bytes" | tee "$WORK/checkpoint.txt"
    train_run "$DEADLINE" "$PREFIX-resume" "${SPEED[@]}" "${TINY[@]}" "${SMOKE[@]}" --checkpoint_every=0 \
      --resume="$checkpoint" || rc=$?
  else
    echo "no checkpoint $checkpoint: no resume"
    [ "$rc" -ne 0 ] || rc=1
  fi
  # The checkpoints (a few GB): never kept, never copied.
  rm -rf "$WORKDIR/logs/$smoke" "$WORKDIR/logs/$PREFIX-resume"
  return "$rc"
}

phase2() {
  train_run "$DEADLINE" "$PREFIX-speed" "${SPEED[@]}" "${TINY[@]}"
}

phase3() {
  local rc=0 seed deadline
  for seed in 1 2; do  # the first run ends by half the time left, so a stuck one leaves the second its half
    deadline=$(( seed == 1 ? SECONDS + (DEADLINE - SECONDS - GRACE) / 2 : DEADLINE ))
    train_run "$deadline" "$PREFIX-quality-s$seed" "${QUALITY[@]}" --seed="$seed" "${TINY[@]}" "${TINY_QUALITY[@]}" \
      || rc=$?
  done
  return "$rc"
}

phase4() {
  local rc=0
  SCRIPT="$REPO/tools/profile_step.py" train_run "$DEADLINE" "$PREFIX-profile" --out="$WORK/profile.txt" \
    "${PROFILE_OPTIONS[@]}" "${SPEED[@]}" "${TINY[@]}" || rc=$?
  if [ -f "$WORK/profile.txt" ]; then cat "$WORK/profile.txt"; elif [ "$rc" -eq 0 ]; then rc=1; fi
  return "$rc"
}

# ---------------------------------------------------------------------------------------------------------
# Main: options, data, then each phase under its limit, the summary and the archive after each.

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
if [ -n "$budget" ] && ! [[ $budget =~ ^[0-9]+$ ]]; then
  echo "error: --budget $budget: expected whole seconds" >&2
  exit 2
fi
if [ ! -d "$data_dir" ]; then
  echo "error: DATA_DIR $data_dir: no such directory" >&2
  exit 2
fi
data_dir=$(cd "$data_dir" && pwd)
OUT=${OUT:-./gpu_check_out}
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then
  echo "error: OUT $OUT is not empty; move its files away (nothing is overwritten) or set OUT to a new folder" >&2
  exit 2
fi
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
TRAINER=$(realpath "${TRAINER:-$REPO/train_gpt.py}")
if [ ! -f "$TRAINER" ]; then
  echo "error: TRAINER $TRAINER: no such file" >&2
  exit 2
fi

decompress() {  # decompress FILE.xz TARGET
  if command -v xz > /dev/null; then
    xz -dc "$1" > "$2"
  else
    "$PYTHON" -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as packed, open(sys.argv[2], "wb") as target:
    shutil.copyfileobj(packed, target, 1 << 24)' "$1" "$2"
  fi
}
for packed in "$data_dir"/*.bin.xz; do
  if [ -e "$packed" ] && [ ! -e "${packed%.xz}" ]; then
    echo "decompressing $packed"
    if ! decompress "$packed" "${packed%.xz}.partial"; then
      rm -f "${packed%.xz}.partial"
      echo "error: cannot decompress $packed (see above); replace it with a good copy" >&2
      exit 2
    fi
    mv "${packed%.xz}.partial" "${packed%.xz}"
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

mkdir -p "$WORKDIR" "$OUT"
WORKDIR=$(cd "$WORKDIR" && pwd)
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
mkdir -p "$WORK/logs"
echo "work folder: $WORK (packed into $OUT/gpu_check.tar.gz after every phase)"

PREFIX="gpucheck-$(date +%Y%m%d-%H%M%S)"
if [ "$dry_run" = 1 ]; then
  # One thread per process: on a small CPU, OpenMP threads spinning beside other processes slow a step ~6x.
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  TINY=(--sequence_length=256 --batch_size=256 --val_tokens=256 --model_dim=32 --num_heads=2 --num_kv_heads=2
        --mlp_dim=64 --num_iterations=4 --val_loss_every=0 --timing_warmup_steps=1)
  SMOKE=(--num_iterations=4 --val_loss_every=2) CKPT_STEP=2 TINY_QUALITY=(--num_iterations=3)
  PROFILE_OPTIONS=(--warmup_steps=1 --profile_steps=1 --at_step=0)
  GRACE=5 MARGIN=5 MIN_PHASE=3
  limits=(0 "${LIMIT_1:-120}" "${LIMIT_2:-60}" "${LIMIT_3:-210}" "${LIMIT_4:-60}")
else
  TINY=() TINY_QUALITY=()
  SMOKE=(--num_iterations=8 --val_loss_every=4) CKPT_STEP=4
  PROFILE_OPTIONS=(--warmup_steps=3 --profile_steps=3 --at_step=50)  # at step 50 of 100: the mean window, 7 blocks
  GRACE=20 MARGIN=15 MIN_PHASE=30
  limits=(0 "${LIMIT_1:-240}" "${LIMIT_2:-200}" "${LIMIT_3:-260}" "${LIMIT_4:-120}")
fi

names=(- "smoke, checkpoint and resume" "speed protocol" "quality protocol x2" "profile")
{
  echo "prefix=$PREFIX"
  echo "dry_run=$dry_run"
  echo "phases=$phases"
  echo "budget=$budget"
  echo "checkpoint_step=$CKPT_STEP"
  echo "data=$TRAIN_GLOB $VAL_GLOB"
  echo "workdir=$WORKDIR"
  echo "python=$PYTHON"
  echo "torchrun=$TORCHRUN"
  echo "trainer=$TRAINER"
  echo "started=$(date -Is)"
} > "$WORK/config.txt"
: > "$WORK/phases.tsv"
record() {  # record PHASE STATUS RC WALL LIMIT NOTE
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "${names[$1]}" "$2" "$3" "$4" "$5" "$6" >> "$WORK/phases.tsv"
}
summarize() {  # summary.md, then summary.md, phases.tsv and the archive into $OUT; tar if Python fails
  if ! "$PYTHON" "$REPO/tools/gpu_check_summary.py" "$WORK" "$OUT"; then
    echo "(summary failed: packing with tar)"
    cp "$WORK/phases.tsv" "$OUT/"
    tar -czf "$OUT/gpu_check.tar.gz" -C "$(dirname "$WORK")" --transform "s|^$(basename "$WORK")|gpu_check|" \
      --exclude=.console "$(basename "$WORK")" || true
  fi
}
for phase in ${phases//,/ }; do
  limit=${limits[$phase]} note=""
  if [ -n "$budget" ]; then
    left=$((budget - SECONDS - GRACE - MARGIN))
    if [ "$left" -lt "$limit" ]; then limit=$left note="limit cut from ${limits[$phase]} s to fit --budget $budget"; fi
  fi
  if [ -n "$STOP_REASON" ]; then
    record "$phase" skipped - 0 - "$STOP_REASON"
  elif [ "$limit" -lt "$MIN_PHASE" ] && [ -n "$note" ]; then
    record "$phase" skipped - 0 - "only $((limit > 0 ? limit : 0)) s of --budget $budget left (at least $MIN_PHASE s)"
  elif [ "$limit" -lt "$MIN_PHASE" ]; then
    record "$phase" skipped - 0 - "LIMIT_$phase=$limit is under $MIN_PHASE s"
  else
    echo "=== [$(date +%T)] phase $phase: ${names[$phase]} (limit ${limit}s)"
    phase_started=$SECONDS DEADLINE=$((SECONDS + limit)) TIMED_OUT=0 rc=0
    "phase$phase" > "$WORK/phase$phase.log" 2>&1 || rc=$?
    if [ -n "$INTERRUPTED" ]; then status=interrupted
    elif [ "$TIMED_OUT" = 1 ]; then status="timed out"
    elif [ "$rc" -ne 0 ]; then status="failed rc $rc"
    else status=ok
    fi
    record "$phase" "$status" "$rc" "$((SECONDS - phase_started))" "$limit" "$note"
    echo "=== [$(date +%T)] phase $phase: $status in $((SECONDS - phase_started))s"
    if [ "$rc" -ne 0 ]; then tail -n 20 "$WORK/phase$phase.log"; fi
  fi
  summarize
done
cat "$OUT/summary.md"
awk -F '\t' '$3 != "ok" { failed = 1 } END { exit failed }' "$WORK/phases.tsv"  # the exit status: 0 if all ok
