#!/bin/bash
# One row of the time-to-accuracy table: runs the main command from a fresh workdir and notes its start time.
#   experiments/time_to_accuracy/run.sh WORKDIR [main flags...]     (from the repository root)
# WORKDIR/start_time and end_time hold the Unix times the command started (the zero of the table's times) and
# ended; the flags are saved in WORKDIR/command. Summarise with experiments/time_to_accuracy/summarize.py.
set -eu
workdir=$1; shift
rm -rf "$workdir"; mkdir -p "$workdir"
echo "python3 -m yolo_jax.main --workdir=WORKDIR $*" > "$workdir/command"
date +%s.%N > "$workdir/start_time"
python3 -m yolo_jax.main --workdir="$workdir" "$@" > "$workdir/log.txt" 2>&1
date +%s.%N > "$workdir/end_time"
