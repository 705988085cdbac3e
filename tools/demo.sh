#!/usr/bin/env bash
# The end-to-end demo on the embedded synthetic dataset, CPU only (make demo):
# generate data -> validate and convert -> train -> evaluate on val -> predict the test set into
# a submission zip -> validate it -> score it against test_gt/ -> draw the figure.
# Re-running reuses the data and continues (or skips) training: every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEMO_DIR=${DEMO_DIR:-output/demo}
DATA="$DEMO_DIR/data"
MODEL="$DEMO_DIR/model"
export CELLSEG_DATASETS="$DATA"

step() { printf '\n==== %s\n' "$*"; }

start=$(date +%s)
if [ ! -f "$DATA/test_image_name_to_ids.json" ]; then
  step "1/7 generating the synthetic dataset in $DATA"
  "$PYTHON" tools/make_synthetic_dataset.py --output "$DATA" --num-train 40 --num-test 10 \
    --seed 0 --min-size 192 --max-size 320
else
  step "1/7 synthetic dataset already in $DATA"
fi

step "2/7 validating and converting"
"$PYTHON" tools/prepare_dataset.py --root "$DATA"

step "3/7 training configs/demo_cells.yaml on CPU (evaluates on cells_val at the end)"
"$PYTHON" tools/train_net.py --config-file configs/demo_cells.yaml --resume OUTPUT_DIR "$MODEL"

step "4/7 predicting the test set"
"$PYTHON" tools/predict.py --config-file configs/demo_cells.yaml \
  --input "$DATA/test_release" --id-map "$DATA/test_image_name_to_ids.json" \
  --output "$DEMO_DIR/submission.zip" --zip MODEL.WEIGHTS "$MODEL/model_final.pth"

step "5/7 validating the submission"
"$PYTHON" tools/validate_submission.py --id-map "$DATA/test_image_name_to_ids.json" \
  --pred "$DEMO_DIR/submission.zip"

step "6/7 scoring against the test ground truth"
"$PYTHON" tools/evaluate_submission.py --gt "$DATA/test_gt" \
  --id-map "$DATA/test_image_name_to_ids.json" --pred "$DEMO_DIR/submission.zip" \
  --json "$DEMO_DIR/test_scores.json"

step "7/7 drawing predictions beside the ground truth"
"$PYTHON" tools/visualize.py --input "$DATA/test_release" \
  --id-map "$DATA/test_image_name_to_ids.json" --pred "$DEMO_DIR/submission.zip" \
  --gt "$DATA/test_gt" --output "$DEMO_DIR/predictions.png" --num-images 4

cat <<MSG

==== done in $(( $(date +%s) - start )) s
  dataset          $DATA
  model            $MODEL/model_final.pth (best: $MODEL/model_best.pth, log: $MODEL/log.txt)
  validation AP    $MODEL/inference/cells_val/
  submission       $DEMO_DIR/submission.zip
  test scores      $DEMO_DIR/test_scores.json
  figure           $DEMO_DIR/predictions.png
MSG
