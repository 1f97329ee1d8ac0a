"""What tracking adds to video detection: per-frame time of `detect --video` with and without `--track`.

    python benchmarks/tracking.py [--workdir=/tmp/track_quick] [--repeats=3] [--out=benchmarks/results/tracking.json]

The MNIST `quick` detector (YOLOv3-tiny at 256; from --workdir, or randomly initialised without one) on a
generated 416x416 occluded digit sequence (yolo_jax.data.mot_sequences, 80 frames, 8 objects, written as an MJPG
.avi), through video.detect_video as `--mode=detect --video` runs it (decode, batched jitted detector, drawing,
video and JSON writing), batch 8. Runs alternate without and with ByteTrack after one warm-up run of each
(compiles); each round's ratio (with / without) and the median over rounds give the overhead (paired rounds,
because the shared 2-core machine's load drifts between minutes). The tracker's own time (track_step, timed
inside the run) is reported too: it is the part of the overhead that does not depend on drawing or I/O.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without `pip install -e .`

import jax  # noqa: E402

from configs.mnist import get_config  # noqa: E402
from yolo_jax import checkpointing, inference, steps, tracking, video  # noqa: E402
from yolo_jax.data import mot_sequences as ms  # noqa: E402
from yolo_jax.postprocess import postprocess_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def random_workdir(config, path: Path) -> Path:
    """A workdir with one checkpoint of a randomly initialised model (as the tests make one)."""
    _, _, state = steps.build_model_and_state(config, 1)
    manager = checkpointing.create_manager(path)
    metrics = {checkpointing.BEST_METRIC: 1.0}
    checkpointing.save(manager, 1, state, {'epoch': 1, 'step': 1, 'metrics': metrics}, metrics=metrics)
    manager.wait_until_finished()
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--workdir', default='')
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--frames', type=int, default=80)
    ap.add_argument('--out', default=str(REPO / 'benchmarks' / 'results' / 'tracking.json'))
    args = ap.parse_args()
    config = get_config('quick')
    tmp = Path(tempfile.mkdtemp(prefix='bench_tracking_'))
    workdir = Path(args.workdir) if args.workdir else random_workdir(config, tmp / 'workdir')
    model, variables, spec = inference.load_detector(config, workdir, None, fold=True)
    seq = ms.generate(ms.SequenceSpec(num_frames=args.frames, occluders=2, seed=0))
    clip = ms.write_sequence(seq, tmp / 'seq') / 'sequence.avi'
    params = tracking.TrackParams.from_config(config.track, 'bytetrack')
    times: dict[str, list[float]] = {'detect': [], 'detect_track': []}
    track_ms: list[float] = []
    for r in range(args.repeats + 1):  # run 0: warm-up (compiles)
        for name, track in (('detect', None), ('detect_track', params)):
            s = video.detect_video(postprocess_config(config, spec), model, variables, clip, tmp / name,
                                   spec.class_names, 8, track=track)
            if r:
                times[name].append(1e3 / s['frames_per_s'])
                if track is not None:
                    track_ms.append(1e3 * s['track_s'] / s['frames'])
    base, tracked = statistics.median(times['detect']), statistics.median(times['detect_track'])
    ratios = [b / a for a, b in zip(times['detect'], times['detect_track'], strict=True)]
    result = {
        'ms_per_frame': {'detect': base, 'detect_track': tracked, 'tracker_only': statistics.median(track_ms)},
        'overhead': statistics.median(ratios) - 1, 'round_ratios': ratios,
        'tracker_share': statistics.median(track_ms) / base,
        'runs_ms_per_frame': times, 'tracker_ms_per_frame_runs': track_ms,
        'detector': f'configs/mnist.py:quick ({"trained: " + str(workdir) if args.workdir else "random init"})',
        'frames': args.frames, 'repeats': args.repeats, 'batch_size': 8,
        'machine': {'platform': platform.platform(), 'cpus': os.cpu_count(), 'devices': str(jax.devices())},
    }
    print(f"per frame: detect {base:.1f} ms, detect --track {tracked:.1f} ms "
          f"(median paired overhead {100 * result['overhead']:+.1f}%); "
          f"the tracker itself {result['ms_per_frame']['tracker_only']:.2f} ms "
          f"({100 * result['tracker_share']:.1f}% of a detect frame)")
    Path(args.out).write_text(json.dumps(result, indent=1) + '\n')
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
