#!/usr/bin/env bash
# The paper's semi-supervised schedule on one GPU: M1 (a VAE, z_dim 50, 600-600), then for each
# label seed M1+M2 and M2 alone at about the paper's number of example passes (3000 epochs of the
# 49,900 unlabelled images, ~150M), large batches with labelled batches drawn with replacement,
# the square-root learning-rate rule and mixed precision (float32 densities). Writes every run's
# logs, metrics.json and model.keras, the SavedModels and results.json under OUT, and prints the
# test accuracy (full test set, grayscale and statically binarised) of each run.
#
#   benchmarks/ssvae_gpu.sh [--out DIR] [--seeds "0 1 2"] [--dry_run]
#
# OUT defaults to $OUT (the device tool's output folder) or runs/ssvae_gpu. --dry_run runs the
# same commands at a tiny size (a few steps, small batches), which takes about a minute on a CPU;
# the test suite runs it (tests/test_ssvae_gpu_script.py). PYTHON picks the interpreter
# (default: python3); the data are found as bin/train finds them (TFP_VAE_DATA_DIR, ...).
#
# Sizes (full run): M1 50,000 steps of 1,000 (50M example passes) at the recipe's learning rate
# 1e-3; M1+M2 and M2 30,000 steps of 4,850 unlabelled + 1,000 labelled (145.5M unlabelled passes,
# 2,900 epochs of the unlabelled set) at 1e-3 * sqrt(4850 / 97) = 7.1e-3. One M1 serves every
# seed (it sees no labels). M1 keeps 1e-3: the same M1 in PyTorch (benchmarks/torch_m1m2.py) at
# batch 4,850 and the square-root rule's 7.1e-3 collapsed on an H200 (train NELBO 618, no
# active unit).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT:-runs/ssvae_gpu}"
SEEDS="0 1 2"
DRY_RUN=0
need_value() {
  [ $# -ge 2 ] && [ -n "$2" ] || { echo "ssvae_gpu.sh: $1 needs a value (see --help)" >&2; exit 2; }
}
while [ $# -gt 0 ]; do
  case "$1" in
    --out) need_value "$@"; OUT_DIR="$2"; shift 2 ;;
    --out=*) OUT_DIR="${1#--out=}"; shift ;;
    --seeds) need_value "$@"; SEEDS="$2"; shift 2 ;;
    --seeds=*) SEEDS="${1#--seeds=}"; shift ;;
    --dry_run) DRY_RUN=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "ssvae_gpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
PYTHON="${PYTHON:-python3}"
for s in $SEEDS; do
  [[ "$s" =~ ^[0-9]+$ ]] || { echo "ssvae_gpu.sh: --seeds must be whole numbers; got '$s'" >&2; exit 2; }
done

if [ "$DRY_RUN" = 1 ]; then
  M1_BATCH=100; BATCH=200; LABELLED_BATCH=50; M1_STEPS=20; SSL_STEPS=20; STEPS_PER_EPOCH=10
  DRY_FLAGS=(--noxla)  # XLA compilation alone is most of a CPU dry run.
else
  M1_BATCH=1000; BATCH=4850; LABELLED_BATCH=1000; M1_STEPS=50000; SSL_STEPS=30000
  STEPS_PER_EPOCH=1000; DRY_FLAGS=()
fi
# No validation: every training image is trained on, as in the recorded results (add
# --validation_split=N for a validation curve on N held-out training images).
COMMON=(--mixed_precision --steps_per_epoch="$STEPS_PER_EPOCH" --verbose=2 "${DRY_FLAGS[@]}")
SSL=(--batch_size="$BATCH" --labelled_batch_size="$LABELLED_BATCH" --lr_scaling=sqrt
     --steps="$SSL_STEPS")
mkdir -p "$OUT_DIR"
if [ -e "$OUT_DIR/m1/checkpoints" ]; then
  echo "ssvae_gpu.sh: $OUT_DIR already holds a run; choose another --out." >&2
  exit 2
fi

run() {  # run NAME ARGS...: one bin/train, its log beside its out_dir.
  local name="$1"; shift
  echo "== $name: bin/train $*"
  "$PYTHON" bin/train --out_dir="$OUT_DIR/$name" "$@" > "$OUT_DIR/$name.log" 2>&1 || {
    echo "ssvae_gpu.sh: $name failed; the end of $OUT_DIR/$name.log:" >&2
    tail -20 "$OUT_DIR/$name.log" >&2
    exit 1
  }
}

start=$(date +%s)
run m1 --model=vae --z_dim=50 --hidden=600,600 --batch_size="$M1_BATCH" --steps="$M1_STEPS" \
  --seed=0 "${COMMON[@]}"
for s in $SEEDS; do
  run "m1m2_s$s" --model=m1m2 --m1_path="$OUT_DIR/m1" --label_seed="$s" --seed="$s" \
    "${SSL[@]}" "${COMMON[@]}"
  run "m2_s$s" --model=ssvae --label_seed="$s" --seed="$s" "${SSL[@]}" "${COMMON[@]}"
done
for name in $(for s in $SEEDS; do echo "m1m2_s$s m2_s$s"; done); do
  "$PYTHON" bin/export --model_path="$OUT_DIR/$name" --export_dir="$OUT_DIR/savedmodel_$name" \
    > "$OUT_DIR/export_$name.log" 2>&1 || { tail -5 "$OUT_DIR/export_$name.log" >&2; exit 1; }
done

"$PYTHON" - "$OUT_DIR" "$SEEDS" "$(( $(date +%s) - start ))" <<'EOF'
import json, os, statistics, sys

out, seeds, seconds = sys.argv[1], sys.argv[2].split(), int(sys.argv[3])
rows, results = [], {"seconds": seconds, "runs": {}}
for model in ("m1m2", "m2"):
    accs = []
    for s in seeds:
        with open(os.path.join(out, f"{model}_s{s}", "metrics.json")) as f:
            m = json.load(f)
        results["runs"][f"{model}_s{s}"] = m
        accs.append((m["accuracy"], m["accuracy_binarized"]))
        rows.append(f"{model:5s} seed {s}: {100 * m['accuracy']:.2f}% "
                    f"({100 * m['accuracy_binarized']:.2f}% binarised), "
                    f"{m['train_seconds']:.0f} s")
    if len(accs) > 1:
        mean = [100 * statistics.mean(a[i] for a in accs) for i in (0, 1)]
        std = [100 * statistics.stdev(a[i] for a in accs) for i in (0, 1)]
        rows.append(f"{model:5s} mean: {mean[0]:.2f}% +/- {std[0]:.2f} "
                    f"({mean[1]:.2f}% +/- {std[1]:.2f} binarised)")
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
print("Test accuracy (full test set, grayscale; statically binarised in brackets):")
print("\n".join(rows))
print(f"Total {seconds} s; logs, metrics.json, model.keras and SavedModels in {out}")
EOF
