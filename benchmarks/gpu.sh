#!/usr/bin/env bash
# The GPU runs on Keras' JAX backend, needing no TensorFlow: the training speed beside the PyTorch
# peer, the paper's M1+M2 schedule, the best MNIST model. Each part is sized for one call of at
# most ~9 minutes on one H200; a run the time limit stops keeps its last checkpoint and resumes.
#
#   benchmarks/gpu.sh --parts speed,m1,m1m2,best [--seeds "0 1 2"] [--out DIR] [--wheels DIR]
#                     [--minutes 8] [--resume] [--dry_run]
#   benchmarks/gpu.sh --download_wheels DIR     # on a machine with a package index
#
# Parts (default: speed):
#   speed  benchmarks/train_throughput.py --backends=jax: the VAE recipe's steps/s at batch 97
#          and 4,850, at 1, 25 and 100 steps per execution, the PyTorch VAE peer at both
#          batches (on CUDA when PyTorch sees a GPU), beside the float32 matmul peak (~2 min).
#   m1     M1 of the paper's schedule: a VAE, z_dim 50, 600-600, 50,000 steps of 1,000 images
#          at the recipe's learning rate 1e-3 (50M example passes).
#   m1m2   for each of --seeds, M2 on M1's features (needs m1's finished run in OUT): 30,000
#          steps of 4,850 unlabelled + 1,000 labelled images drawn with replacement (145.5M
#          unlabelled passes, ~2,900 epochs, about the paper's 3000), --lr_scaling=sqrt (7.1e-3).
#   best   the best MNIST model (docs/results.md): GMVAE z_dim 50, 500-500, IWAE k=3, batch 100,
#          cosine schedule, 200,000 steps; then bin/evaluate's IWAE-5000 if time is left.
# Every training run uses --mixed_precision (bfloat16 networks, float32 densities) and no
# validation split (as the recorded results). M1 keeps 1e-3: the same M1 in PyTorch
# (benchmarks/torch_m1m2.py) at batch 4,850 and the square-root rule's 7.1e-3 collapsed on an
# H200 (train NELBO 618, no active unit). One M1 serves every seed (it sees no labels).
#
# Outputs under OUT (default $OUT, the device tool's output folder, else runs/gpu): each run's
# folder (model.keras, metrics.json, checkpoints) and log, speed.json and speed.log, and
# results.json, which every call merges into (a part's entries are replaced only by a newer
# call of that part). SavedModels are not exported here (bin/export needs TensorFlow): export
# them afterwards on a CPU with `bin/export --model_path=OUT/NAME`.
#
# A run folder that exists is never overwritten: without --resume the call is refused; with
# --resume a finished run is kept (and reported) and an unfinished one goes on from its last
# checkpoint. --minutes (default 8) bounds the whole call: a run still going then is stopped
# (SIGTERM) and the call says how to go on. --seeds picks the label seeds of this call.
#
# Offline install: --wheels DIR installs DIR/*.whl with `pip install --no-index --no-deps
# --target` into a temporary folder put first on PYTHONPATH, unless keras and TFP's JAX substrate
# already import (then it says so and installs nothing). --download_wheels DIR fetches the
# wheels the GPU machine lacks for Python 3.12 (keras, tfp-nightly at setup.cfg's versions, and
# optree, dm-tree, namex, decorator, gast, cloudpickle, six: ~9.7 MiB); it assumes numpy,
# absl-py, ml_dtypes, h5py, rich, packaging, attrs, wrapt and typing_extensions are there (JAX's,
# PyTorch's and the machine's own packages). --dry_run runs the same commands at a tiny size
# on the CPU (tests/test_gpu_script.py). PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

die() { echo "gpu.sh: $*" >&2; exit 2; }
OUT_DIR="${OUT:-runs/gpu}"
PARTS="speed"
SEEDS="0 1 2"
WHEELS=""
DOWNLOAD=""
MINUTES=8
RESUME=0
DRY_RUN=0
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out|--parts|--seeds|--wheels|--download_wheels|--minutes)
      need_value "$@"; opt="${1#--}"; val="$2"; shift 2 ;;
    --out=*|--parts=*|--seeds=*|--wheels=*|--download_wheels=*|--minutes=*)
      opt="${1%%=*}"; opt="${opt#--}"; val="${1#*=}"; shift
      [ -n "$val" ] || die "--$opt needs a value (see --help)" ;;
    --resume) RESUME=1; shift; continue ;;
    --dry_run) DRY_RUN=1; shift; continue ;;
    -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  case "$opt" in
    out) OUT_DIR="$val" ;;
    parts) PARTS="$val" ;;
    seeds) SEEDS="${val//,/ }" ;;
    wheels) WHEELS="$val" ;;
    download_wheels) DOWNLOAD="$val" ;;
    minutes) MINUTES="$val" ;;
  esac
done
PYTHON="${PYTHON:-python3}"

if [ -n "$DOWNLOAD" ]; then
  # The versions of setup.cfg (keras, tfp-nightly) and of the test venv (the rest).
  "$PYTHON" -m pip download --only-binary=:all: --no-deps --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DOWNLOAD" \
    keras==3.15.1 tfp-nightly==0.26.0.dev20261027 optree==0.20.0 dm-tree==0.1.10 \
    namex==0.1.0 decorator==5.3.1 gast==0.7.0 cloudpickle==3.1.3 six==1.17.0
  echo "Wheels in $DOWNLOAD ($(du -sh "$DOWNLOAD" | cut -f1)); carry them with the call and pass --wheels $DOWNLOAD."
  exit 0
fi

IFS=',' read -r -a PART_LIST <<< "$PARTS"
[ ${#PART_LIST[@]} -gt 0 ] || die "--parts is empty; give some of speed,m1,m1m2,best"
for p in "${PART_LIST[@]}"; do
  case "$p" in speed|m1|m1m2|best) ;; *) die "unknown part '$p' in --parts; the parts are speed,m1,m1m2,best" ;; esac
done
has_part() { [[ ",$PARTS," == *",$1,"* ]]; }
for s in $SEEDS; do
  [[ "$s" =~ ^[0-9]+$ ]] || die "--seeds must be whole numbers; got '$s'"
done
[ -n "${SEEDS// /}" ] || die "--seeds is empty; give label seeds, e.g. --seeds \"0 1 2\""
[[ "$MINUTES" =~ ^[0-9]+([.][0-9]+)?$ ]] && [ "$(awk -v m="$MINUTES" 'BEGIN {print (m >= 1)}')" = 1 ] \
  || die "--minutes must be a number of minutes >= 1; got '$MINUTES'"
if [ -n "$WHEELS" ]; then
  compgen -G "$WHEELS/*.whl" > /dev/null || die "--wheels $WHEELS holds no .whl files (see --download_wheels)"
fi

if [ "$DRY_RUN" = 1 ]; then
  SPEED=(--batch=97,500 --steps=10 --repeats=1 --jax_steps_per_execution=1,5)
  M1=(--batch_size=100 --steps=10); SSL=(--batch_size=200 --labelled_batch_size=50 --steps=10)
  BEST=(--batch_size=100 --steps=10); SPE=(--steps_per_epoch=5); IWAE=(--iw=10 --examples=100)
  # Ten steps of M1 leave no unit above the 0.1 threshold of M2's active units: model them all.
  M1M2=(--active_threshold=0)
else
  SPEED=(--batch=97,4850 --steps=500 --repeats=3)
  M1=(--batch_size=1000 --steps=50000); SSL=(--batch_size=4850 --labelled_batch_size=1000 --steps=30000)
  BEST=(--batch_size=100 --steps=200000); SPE=(--steps_per_epoch=1000); M1M2=()
  IWAE=(--iw=5000 --max_rows=100000)  # Larger chunks than the CPU's 20,000 rows on a GPU.
fi

# The runs of this call, in order: NAME and its bin/train arguments.
RUNS=()
has_part m1 && RUNS+=(m1)
if has_part m1m2; then for s in $SEEDS; do RUNS+=("m1m2_s$s"); done; fi
has_part best && RUNS+=(best_mnist)
train_args() {
  case "$1" in
    m1) echo --model=vae --z_dim=50 --hidden=600,600 --seed=0 "${M1[@]}" ;;
    m1m2_s*) local s="${1#m1m2_s}"
      echo --model=m1m2 --m1_path="$OUT_DIR/m1" --label_seed="$s" --seed="$s" --lr_scaling=sqrt "${SSL[@]}" "${M1M2[@]}" ;;
    best_mnist) echo --model=gmvae --z_dim=50 --hidden=500,500 --objective=iwae --iw=3 \
      --lr_schedule=cosine --seed=0 "${BEST[@]}" ;;
  esac
}
finished() { [ -f "$OUT_DIR/$1/metrics.json" ] && [ -f "$OUT_DIR/$1/model.keras" ]; }

# Refuse before doing anything: a part's outputs that exist without --resume.
if [ "$RESUME" = 0 ]; then
  for name in "${RUNS[@]}"; do
    [ ! -e "$OUT_DIR/$name" ] || die "$OUT_DIR/$name exists; pass --resume to keep a finished run and continue an unfinished one, or choose another --out"
  done
  if has_part speed && [ -e "$OUT_DIR/speed.json" ]; then
    die "$OUT_DIR/speed.json exists; pass --resume to keep it, or choose another --out"
  fi
fi
if has_part m1m2 && ! has_part m1 && ! finished m1; then
  die "m1m2 needs M1's finished run in $OUT_DIR/m1; add m1 to --parts (or bring OUT back from the call that trained it)"
fi
if [ -e "$OUT_DIR/results.json" ]; then
  "$PYTHON" -c 'import json, sys; json.load(open(sys.argv[1]))' "$OUT_DIR/results.json" 2> /dev/null \
    || die "$OUT_DIR/results.json is not readable JSON; move it aside first"
fi
mkdir -p "$OUT_DIR" || die "cannot make $OUT_DIR"

START=$(date +%s)
DEADLINE=$(awk -v s="$START" -v m="$MINUTES" 'BEGIN {printf "%d", s + 60 * m}')
RESERVE=20  # Seconds kept for results.json at the end.
export KERAS_BACKEND=jax TF_CPP_MIN_LOG_LEVEL=3
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

# The packages: what is installed already, else the wheels (found, not imported: importing takes
# seconds; the first bin/train imports them).
found='import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ("jax", "keras", "tensorflow_probability")))'
check='import keras, tensorflow_probability.substrates.jax; assert keras.config.backend() == "jax"'
if "$PYTHON" -c "$found" 2> /dev/null; then
  [ -z "$WHEELS" ] || echo "== jax, keras and TFP are installed already: nothing installed from $WHEELS"
else
  [ -n "$WHEELS" ] || die "jax, keras or TFP is not installed for $PYTHON; pass --wheels DIR (see --download_wheels)"
  SITE_ROOT="$(mktemp -d)"; SITE="$SITE_ROOT/site"
  trap 'rm -rf "$SITE_ROOT"' EXIT
  echo "== pip install --no-index --no-deps --target $SITE $WHEELS/*.whl"
  "$PYTHON" -m pip install -q --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl > "$OUT_DIR/install.log" 2>&1 \
    || { echo "gpu.sh: installing the wheels failed; the end of $OUT_DIR/install.log:" >&2; tail -5 "$OUT_DIR/install.log" >&2; exit 1; }
  export PYTHONPATH="$SITE:$PYTHONPATH"
  "$PYTHON" -c "$check" 2> "$OUT_DIR/install.log" \
    || die "the wheels installed but do not import: $(tail -1 "$OUT_DIR/install.log")"
fi

STATUS="$(mktemp)"  # "NAME STATUS" lines of this call, for results.json.
trap 'rm -rf "$STATUS" ${SITE_ROOT:+"$SITE_ROOT"}' EXIT
STOPPED=0
left() { echo $(( DEADLINE - $(date +%s) - RESERVE )); }

# timed NAME LOG COMMAND...: the command under what is left of --minutes; 0 done, 1 failed,
# 2 stopped by the time limit.
timed() {
  local name="$1" log="$2"; shift 2
  local seconds; seconds=$(left)
  if [ "$seconds" -lt 30 ]; then echo "$name not_started" >> "$STATUS"; STOPPED=1; return 2; fi
  local rc=0 t0; t0=$(date +%s)
  timeout --signal=TERM --kill-after=15 "$seconds" "$@" >> "$log" 2>&1 || rc=$?
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then echo "$name stopped" >> "$STATUS"; STOPPED=1; return 2; fi
  if [ "$rc" != 0 ]; then
    echo "gpu.sh: $name failed (exit status $rc); the end of $log:" >&2
    tail -20 "$log" >&2
    return 1
  fi
  echo "   $name: $(( $(date +%s) - t0 )) s"
  return 0
}

if has_part speed; then
  if [ "$RESUME" = 1 ] && [ -f "$OUT_DIR/speed.json" ]; then
    echo "== speed: kept $OUT_DIR/speed.json"
  else
    echo "== speed: benchmarks/train_throughput.py --backends=jax --models=vae ${SPEED[*]}"
    rc=0; timed speed "$OUT_DIR/speed.log" "$PYTHON" benchmarks/train_throughput.py --backends=jax \
      --models=vae "${SPEED[@]}" --output_json="$OUT_DIR/speed.json" || rc=$?
    [ "$rc" != 1 ] || exit 1
    # The table: from the peak's line to the JSON (the log has the libraries' start-up lines).
    [ "$rc" != 0 ] || { echo "speed done" >> "$STATUS"; awk '/^float32 matmul peak/ {p = 1} /^[{]/ {p = 0} p' "$OUT_DIR/speed.log"; }
  fi
fi

for name in "${RUNS[@]}"; do
  [ "$STOPPED" = 0 ] || { echo "$name not_started" >> "$STATUS"; continue; }
  if finished "$name"; then
    echo "== $name: kept, finished in an earlier call"; echo "$name kept" >> "$STATUS"; continue
  fi
  resume=()
  [ ! -e "$OUT_DIR/$name" ] || resume=(--resume)
  # shellcheck disable=SC2046  # train_args's words are flags without spaces.
  args=($(train_args "$name") --mixed_precision --verbose=2 "${SPE[@]}" --backend=jax "${resume[@]}")
  echo "== $name: bin/train ${args[*]}"
  rc=0; timed "$name" "$OUT_DIR/$name.log" "$PYTHON" bin/train --out_dir="$OUT_DIR/$name" "${args[@]}" || rc=$?
  [ "$rc" != 1 ] || exit 1
  [ "$rc" != 0 ] || echo "$name done" >> "$STATUS"
done

if has_part best && finished best_mnist && [ "$STOPPED" = 0 ] && [ ! -f "$OUT_DIR/best_mnist/iwae.json" ]; then
  echo "== best_mnist: bin/evaluate ${IWAE[*]}"
  rc=0; timed best_mnist_iwae "$OUT_DIR/best_mnist_iwae.log" "$PYTHON" bin/evaluate --backend=jax \
    --model_path="$OUT_DIR/best_mnist" "${IWAE[@]}" --output_json="$OUT_DIR/best_mnist/iwae.json" || rc=$?
  [ "$rc" != 1 ] || exit 1
fi

"$PYTHON" benchmarks/gpu_results.py --out="$OUT_DIR" --status="$STATUS" --parts="$PARTS" \
  --seeds="$SEEDS" --seconds=$(( $(date +%s) - START )) --dry_run="$DRY_RUN"
if [ "$STOPPED" = 1 ]; then
  echo "gpu.sh: the --minutes=$MINUTES limit stopped the call; each stopped run keeps its last checkpoint: bring $OUT_DIR back and rerun with --resume to go on" >&2
  exit 3
fi
