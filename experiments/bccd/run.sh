#!/bin/bash
# One row of the BCCD table: the own-photos command from a fresh workdir, timed, then --mode=eval for the per-class
# table.   experiments/bccd/run.sh WORKDIR [main flags...]     (from the repository root; BCCD at $BCCD)
# WORKDIR/start_time and end_time: Unix times the training command started and ended; WORKDIR/command: its flags.
set -eu
workdir=$1; shift
bccd=${BCCD:-../shared/data/bccd}
rm -rf "$workdir"; mkdir -p "$(dirname "$workdir")"
tmp=$(mktemp -d)
echo "python3 -m yolo_jax.main --config=configs/photos.py --config.data.root=BCCD --workdir=WORKDIR $*" > "$tmp/command"
date +%s.%N > "$tmp/start_time"
if ! python3 -m yolo_jax.main --config=configs/photos.py --config.data.root="$bccd" --workdir="$workdir" "$@" \
    > "$tmp/log.txt" 2>&1; then
    tail -n 20 "$tmp/log.txt" >&2; rm -rf "$tmp"; exit 1  # e.g. a bad flag: its error line, nothing left behind
fi
date +%s.%N > "$tmp/end_time"
mv "$tmp"/* "$workdir"/ && rmdir "$tmp"
python3 -m yolo_jax.main --workdir="$workdir" --mode=eval > "$workdir/eval_log.txt" 2>&1
