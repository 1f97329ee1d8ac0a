#!/usr/bin/env bash
# The tracking experiment (README.md here). From the repository root; on a quiet 2-core Intel Xeon: ~8.5 min of
# training (the README's main command: VOC mAP@0.5 0.923), ~5 min for the detector on the 80 sequences (40 seeds x
# clean / occluded) and ~10 min for the trackers (again from the logged detections alone: add --from_logs). Then
# the same with the detector trained from scratch (the offline run: no Darknet weights; mAP@0.5 0.871), the second
# detector of the README.
set -euo pipefail
pip install motmetrics
pip install --no-deps 'supervision<0.27'   # 0.27+ no longer ships ByteTrack; --no-deps keeps opencv-python-headless
mkdir -p weights && cp ../shared/data/darknet/yolov3-tiny.weights weights/   # or Darknet's site (README)
nice python3 -m yolo_jax.main --config=configs/mnist.py:quick --workdir=/tmp/track_quick
nice python3 experiments/tracking/run.py --workdir=/tmp/track_quick --tmp=/tmp/track_exp --out=experiments/tracking
nice python3 -m yolo_jax.main --config=configs/mnist.py:quick --workdir=/tmp/track_scratch --config.train.init_from=
nice python3 experiments/tracking/run.py --workdir=/tmp/track_scratch --tmp=/tmp/track_exp_scratch \
    --out=/tmp/track_scratch_out
cp /tmp/track_scratch_out/results.json experiments/tracking/results_scratch_detector.json
python3 benchmarks/tracking.py --workdir=/tmp/track_quick --repeats=5 --frames=40
# One sequence by hand: generate, detect and track, evaluate.
python3 -m yolo_jax.data.mot_sequences --output=/tmp/seq0 --occluders=2 --seed=0
python3 -m yolo_jax.main --config=configs/mnist.py:quick --workdir=/tmp/track_quick --mode=detect \
    --images=/tmp/seq0/img1 --track --output=/tmp/seq0/out
python3 -m yolo_jax.track_eval --gt=/tmp/seq0/gt/gt.txt --pred=/tmp/seq0/out/tracks.txt
