#!/usr/bin/env bash
# The tracking experiment (README.md here). From the repository root; ~25 min of training on 2 loaded CPU cores
# (stopped after 6 of the 10 epochs, VOC mAP@0.5 0.913), then ~20 min for the detector on the 20 sequences and
# ~3 min for the trackers (again from the logged detections alone: add --from_logs).
set -euo pipefail
pip install motmetrics
pip install --no-deps 'supervision<0.27'   # 0.27+ no longer ships ByteTrack; --no-deps keeps opencv-python-headless
mkdir -p weights && cp ../shared/data/darknet/yolov3-tiny.weights weights/   # or Darknet's site (README)
nice python3 -m yolo_jax.main --config=configs/mnist.py:quick --workdir=/tmp/track_quick
nice python3 experiments/tracking/run.py --workdir=/tmp/track_quick --seeds=10 --detector_seeds=10 --held_out=5 \
    --tmp=/tmp/track_exp --out=experiments/tracking
python3 benchmarks/tracking.py --workdir=/tmp/track_quick --repeats=5 --frames=40
# One sequence by hand: generate, detect and track, evaluate.
python3 -m yolo_jax.data.mot_sequences --output=/tmp/seq0 --occluders=2 --seed=0
python3 -m yolo_jax.main --config=configs/mnist.py:quick --workdir=/tmp/track_quick --mode=detect \
    --images=/tmp/seq0/img1 --track --output=/tmp/seq0/out --config.track.high_score=0.3 --config.track.low_match_iou=0.4 \
    --config.track.duplicate_iou=0.8
python3 -m yolo_jax.track_eval --gt=/tmp/seq0/gt/gt.txt --pred=/tmp/seq0/out/tracks.txt
