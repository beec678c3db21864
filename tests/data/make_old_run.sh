#!/usr/bin/env bash
# Rebuild tests/data/old_run/: checkpoint-4 of an 8-step offline demo run written by commit cf7c7f6 (the flat
# trainer/ layout before issue 19), with the run.json and settings.json beside it. tests/test_old_checkpoint.py
# resumes it with today's code, so a run that an older version left behind keeps resuming bit-equal.
#
# Usage: tests/data/make_old_run.sh   (from anywhere in the repository; PYTHON= another interpreter)
# The settings here must match OLD_RUN_SETTINGS in tests/test_old_checkpoint.py.
set -euo pipefail

COMMIT=cf7c7f6
ROOT=$(git rev-parse --show-toplevel)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
DEST=$ROOT/tests/data/old_run
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

mkdir "$WORK/src"
git -C "$ROOT" archive "$COMMIT" | tar -x -C "$WORK/src"
# A clean environment (no setting of this shell, no .env: the archive has none), offline, and one thread: the
# test trains with one too, so that its steps add up in the same order, bit for bit.
(cd "$WORK/src" && env -i PATH="$PATH" HOME="$HOME" PYTHONPATH="$WORK/src" HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 \
    TOKENIZERS_PARALLELISM=false OUTPUT_DIR="$WORK/out" MAX_STEPS=8 SAVE_STEPS=4 EVAL_STEPS=4 BATCH_SIZE=8 \
    MAX_TRAIN_SAMPLES=64 MAX_EVAL_SAMPLES=32 LOGGING_STEPS=4 "$PYTHON" -m trainer train)

rm -rf "$DEST"
mkdir -p "$DEST"
cp -a "$WORK/out/checkpoint-4" "$WORK/out/run.json" "$WORK/out/settings.json" "$DEST/"
echo "$COMMIT" > "$DEST/COMMIT"
du -sh "$DEST"
