"""The tracking experiment: our ByteTrack and SORT beside supervision's ByteTrack on generated digit sequences.

    python experiments/tracking/run.py --out=experiments/tracking [--workdir=/tmp/track_quick] [--seeds=40]
        [--detector_seeds=40] [--held_out=35] [--tmp=DIR] [--from_logs]

1. Perfect detections (the ground truth, score 1, shuffled per frame) of `clean` sequences (crossings, speed
   changes, objects entering and leaving, no occluder) and `occluded` ones (the same plus two vertical bars that
   hide objects for a few frames).
2. With --workdir (a trained MNIST detector, e.g. the `quick` config): the detector on the same sequences'
   frames (video.detect_video with our ByteTrack, as `--mode=detect --track` runs it), then the logged
   detections (scores down to track.low_score) fed to our ByteTrack and SORT with class_mode 'vote' (the
   default) and 'strict', to our ByteTrack without merging duplicates (duplicate_iou 1.0) and with the classes
   ignored (class-agnostic, as supervision's is), to supervision's ByteTrack, and to our ByteTrack over a range of
   class_penalty and duplicate_iou values (on the tuning sequences: all but the last --held_out, which are also
   evaluated alone). With --from_logs the detections an earlier run logged under --tmp are reused (the trackers
   alone take about 10 minutes for 40 seeds).
3. Ours beside supervision's: a paired bootstrap over the sequences (`paired_bootstrap`) says how sure "above" is.
Every tracker gets the same detections; metrics by yolo_jax.track_eval (motmetrics, IoU >= 0.5). Writes
results.json and crossing.png (a strip of a crossing with our ids) into --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from yolo_jax import track_eval, tracking, visualize  # noqa: E402
from yolo_jax.data import mot_sequences as ms  # noqa: E402

Frames = list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # per frame: boxes (N, 4) xyxy, scores, classes


def gt_rows(seq: ms.Sequence) -> tracking.MotRows:
    return tracking.MotRows(seq.gt[:, 0].astype(np.int64), seq.gt[:, 1].astype(np.int64), seq.gt[:, 2:6],
                            np.ones(len(seq.gt)))


def rows_of(frames: Frames, ids: list[np.ndarray]) -> tracking.MotRows:
    """Tracked boxes (id >= 0) as MOT rows."""
    f, i, b = [], [], []
    for t, ((boxes, _, _), tid) in enumerate(zip(frames, ids, strict=True), start=1):
        keep = np.asarray(tid) >= 0
        f += [t] * int(keep.sum())
        i += np.asarray(tid)[keep].tolist()
        b += np.reshape(boxes, (-1, 4))[keep].tolist()
    return tracking.MotRows(np.asarray(f, np.int64), np.asarray(i, np.int64), np.reshape(b, (-1, 4)),
                            np.ones(len(f)))


def ours(frames: Frames, method: str, **overrides) -> list[np.ndarray]:
    """Our tracker with config.track's defaults (class_mode 'vote'), or with these fields changed."""
    from configs.mnist import get_config

    params = tracking.TrackParams.from_config(get_config('quick').track, method)
    return tracking.track_sequence(frames, dataclasses.replace(params, **overrides))


def supervision_bytetrack(frames: Frames) -> list[np.ndarray]:
    """supervision's ByteTrack (class-agnostic) with its defaults (activation 0.25, buffer 30 frames at 30 fps,
    matching 0.8, confirmed at once); returns per detection its tracker id or -1."""
    import supervision as sv

    tracker = sv.ByteTrack(frame_rate=30)
    out = []
    for boxes, scores, classes in frames:
        boxes = np.reshape(boxes, (-1, 4)).astype(np.float32)
        det = sv.Detections(xyxy=boxes, confidence=np.asarray(scores, np.float32),
                            class_id=np.asarray(classes, int))
        res = tracker.update_with_detections(det)
        ids = np.full(len(boxes), -1, np.int64)
        for box, tid in zip(res.xyxy, res.tracker_id, strict=True):  # it returns the matched detections' boxes
            ids[int(np.argmin(np.abs(boxes - box).sum(axis=1)))] = int(tid)
        out.append(ids)
    return out


def any_class(frames: Frames) -> Frames:
    """The same detections with every class set to 0 (a class-agnostic tracker, as supervision's)."""
    return [(b, s, np.zeros_like(np.asarray(c))) for b, s, c in frames]


TRACKERS = {'ours_bytetrack': lambda f: ours(f, 'bytetrack'),
            'ours_bytetrack_no_merge': lambda f: ours(f, 'bytetrack', duplicate_iou=1.0),
            'ours_bytetrack_strict': lambda f: ours(f, 'bytetrack', class_mode='strict'),
            'ours_sort': lambda f: ours(f, 'sort'), 'ours_sort_strict': lambda f: ours(f, 'sort', class_mode='strict'),
            'ours_bytetrack_any_class': lambda f: ours(any_class(f), 'bytetrack'),
            'supervision_bytetrack': supervision_bytetrack}
PENALTIES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)  # class_penalty of 'vote' (ByteTrack, the other fields default)
DUPLICATE_IOUS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # duplicate_iou (ByteTrack, 'vote'); the default 0.6 chosen here
KEYS = ('idf1', 'mota', 'num_switches', 'num_fragmentations', 'mostly_tracked', 'mostly_lost', 'precision',
        'recall')
COUNTS = ('idtp', 'idfp', 'idfn', 'num_objects', 'num_misses', 'num_false_positives', 'num_switches')  # to pool
RATES = ('idf1', 'mota', 'precision', 'recall')


def evaluate(seqs: list[ms.Sequence], detections: list[Frames], trackers: dict | None = None) -> dict:
    """Per tracker (default TRACKERS): metrics per sequence (KEYS and COUNTS) and their totals (IDF1 / MOTA over
    all sequences pooled)."""
    import motmetrics as mm

    out = {}
    metrics = mm.metrics.create()
    names = list(dict.fromkeys((*KEYS, *COUNTS)))
    for name, run in (trackers or TRACKERS).items():
        accs, per_seq, seconds = [], [], 0.0
        for seq, frames in zip(seqs, detections, strict=True):
            t = time.perf_counter()
            ids = run(frames)
            seconds += time.perf_counter() - t
            accs.append(track_eval.accumulate(gt_rows(seq), rows_of(frames, ids)))
            row = metrics.compute(accs[-1], metrics=names, name='seq').iloc[0]
            per_seq.append({k: float(row[k]) if k in RATES else int(row[k]) for k in names})
        pooled = metrics.compute_many(accs, metrics=list(KEYS), names=[str(i) for i in range(len(accs))],
                                      generate_overall=True).loc['OVERALL']
        total = {k: float(pooled[k]) if k in RATES else int(pooled[k]) for k in KEYS}
        out[name] = {'overall': total, 'per_sequence': per_seq,
                     'ms_per_frame': 1e3 * seconds / sum(len(f) for f in detections)}
    return out


def _counts(per_seq: list[dict]) -> np.ndarray:
    """(S, len(COUNTS)) the sequences' counts."""
    return np.asarray([[r[k] for k in COUNTS] for r in per_seq], np.float64)


def _rates(summed: np.ndarray) -> dict[str, np.ndarray]:
    """IDF1 and MOTA from summed counts (..., len(COUNTS)), as motmetrics pools them."""
    c = dict(zip(COUNTS, np.moveaxis(summed, -1, 0), strict=True))
    return {'idf1': 2 * c['idtp'] / (2 * c['idtp'] + c['idfp'] + c['idfn']),
            'mota': 1 - (c['num_misses'] + c['num_false_positives'] + c['num_switches']) / c['num_objects']}


def pooled(per_seq: list[dict]) -> dict[str, float]:
    """IDF1 and MOTA of sequences pooled, from their summed counts (motmetrics' OVERALL row computes the same)."""
    return {k: float(v) for k, v in _rates(_counts(per_seq).sum(axis=0)).items()}


def paired_bootstrap(ours_seq: list[dict], theirs_seq: list[dict], draws: int = 2000, seed: int = 0) -> dict:
    """How sure "ours above theirs" is: the sequences resampled with replacement (the same draw for both
    trackers), pooled IDF1 and MOTA recomputed. Per metric: the difference on the sequences as they are, the
    2.5 / 97.5 percentiles of the resampled differences, the share of draws where ours is above, and in how many
    sequences ours is above / level / below."""
    draws_idx = np.random.default_rng(seed).integers(0, len(ours_seq), size=(draws, len(ours_seq)))
    ours, theirs = _counts(ours_seq), _counts(theirs_seq)
    resampled = {k: v - _rates(theirs[draws_idx].sum(axis=1))[k]
                 for k, v in _rates(ours[draws_idx].sum(axis=1)).items()}  # (draws,) per metric
    out = {}
    for metric, diff in resampled.items():
        per = np.asarray([a[metric] - b[metric] for a, b in zip(ours_seq, theirs_seq, strict=True)])
        out[metric] = {'difference': pooled(ours_seq)[metric] - pooled(theirs_seq)[metric],
                       'low': float(np.percentile(diff, 2.5)), 'high': float(np.percentile(diff, 97.5)),
                       'share_above': float(np.mean(diff > 0)),
                       'sequences_above_level_below': [int(np.sum(per > 1e-12)), int(np.sum(np.abs(per) <= 1e-12)),
                                                       int(np.sum(per < -1e-12))]}
    return out


def detector_frames(workdir: Path, seqs: list[ms.Sequence], tmp: Path) -> tuple[list[Frames], dict]:
    """The trained detector (configs/mnist.py:quick) on each sequence through video.detect_video with our
    ByteTrack; returns the logged detections per frame and the run's summary."""
    from configs.mnist import get_config
    from yolo_jax import inference, video
    from yolo_jax.postprocess import postprocess_config

    config = get_config('quick')
    model, variables, spec = inference.load_detector(config, workdir, None, fold=True)
    params = tracking.TrackParams.from_config(config.track, 'bytetrack')
    all_frames, summaries = [], []
    for k, seq in enumerate(seqs):
        folder = ms.write_sequence(seq, tmp / f'seq{k}', video=False)
        paths = sorted((folder / 'img1').iterdir())
        summary = video.detect_video(postprocess_config(config, spec), model, variables, paths, tmp / f'out{k}',
                                     spec.class_names, 8, track=params)
        records = [json.loads(ln) for ln in Path(summary['jsonl']).read_text().splitlines()]
        frames = [(np.reshape(r['boxes'], (-1, 4)), np.asarray(r['scores']), np.asarray(r['classes']))
                  for r in records]
        # The CLI's tracks are our ByteTrack over these logged detections.
        again = tracking.track_sequence(frames, params)
        assert [a.tolist() for a in again] == [r['track_id'] for r in records]
        all_frames.append(frames)
        summaries.append({'frames_per_s': summary['frames_per_s'], 'track_s': summary['track_s'],
                          'frames': summary['frames']})
    (tmp / 'detect_video.json').write_text(json.dumps({'runs': summaries}, indent=1) + '\n')
    return all_frames, {'runs': summaries}


def logged_frames(count: int, tmp: Path) -> tuple[list[Frames], dict]:
    """The detections a previous detector_frames run logged under `tmp` (out0/detections.jsonl, ...) and its
    summary: the trackers can then be re-run without the detector."""
    all_frames = []
    for k in range(count):
        records = [json.loads(ln) for ln in (tmp / f'out{k}' / 'detections.jsonl').read_text().splitlines()]
        all_frames.append([(np.reshape(r['boxes'], (-1, 4)), np.asarray(r['scores']), np.asarray(r['classes']))
                           for r in records])
    return all_frames, json.loads((tmp / 'detect_video.json').read_text())


def crossing_strip(seq: ms.Sequence, frames: Frames, ids: list[np.ndarray], path: Path, scale: float = 1.0) -> None:
    """Frames around the first pair's crossing (every second frame from -8 to +8), cropped around it, drawn with
    our ids and trails."""
    a, b = seq.objects[0], seq.objects[1]
    dist = np.abs(a.corners[:, 0] - b.corners[:, 0])
    t_meet = int(np.nanargmin(dist))
    trails: dict = {}
    tiles = []
    centre = (a.corners[t_meet] + b.corners[t_meet]) / 2 + a.side / 2
    half = 90
    x0 = int(np.clip(centre[0] - half, 0, seq.spec.size - 2 * half))
    y0 = int(np.clip(centre[1] - half, 0, seq.spec.size - 2 * half))
    for t in range(len(frames)):
        boxes, _, classes = frames[t]
        trails = tracking.update_trails(trails, ids[t], boxes, 16)
        if t_meet - 8 <= t <= t_meet + 8 and (t - t_meet) % 2 == 0:
            keep = ids[t] >= 0
            drawn = visualize.draw_tracks(seq.frames[t], np.reshape(boxes, (-1, 4))[keep], ids[t][keep],
                                          np.asarray(classes)[keep], None,
                                          {int(i): trails.get(int(i), ()) for i in ids[t][keep]})
            tiles.append(drawn[y0 : y0 + 2 * half, x0 : x0 + 2 * half])
    from PIL import Image

    Image.fromarray(visualize.grid(tiles, ncols=len(tiles))).save(path)


def compact(results: dict) -> dict:
    """The results with the per-sequence figures kept only where the comparison needs them (our ByteTrack and
    supervision's on the detector's sequences): the rest are pooled figures."""
    out = json.loads(json.dumps(results))
    for part in ('perfect_detections', 'detector'):
        for per_tracker in out[part].values():
            for tracker, value in per_tracker.items():
                keep = part == 'detector' and tracker in ('ours_bytetrack', 'supervision_bytetrack')
                if isinstance(value, dict) and 'per_sequence' in value and not keep:
                    del value['per_sequence']
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default=str(REPO / 'experiments' / 'tracking'))
    ap.add_argument('--workdir', default='', help='a trained MNIST quick workdir for the detector part')
    ap.add_argument('--seeds', type=int, default=40)
    ap.add_argument('--detector_seeds', type=int, default=40)
    ap.add_argument('--tmp', default='/tmp/tracking_experiment', help='sequences and detector logs go here')
    ap.add_argument('--held_out', type=int, default=35,
                    help='the last this many detector seeds: also evaluated alone (the thresholds were not chosen '
                         'on them); the class_penalty sweep runs on the others')
    ap.add_argument('--from_logs', action='store_true',
                    help='reuse the detections an earlier run (same --tmp, --detector_seeds) logged under --tmp')
    args = ap.parse_args()
    out, tmp = Path(args.out), Path(args.tmp)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {'sequences': {}, 'perfect_detections': {}, 'detector': {}}
    seqs = {}
    for name, occluders in (('clean', 0), ('occluded', 2)):
        seqs[name] = [ms.generate(ms.SequenceSpec(occluders=occluders, seed=s)) for s in range(args.seeds)]
        gaps = [g for s in seqs[name] for g in ms.occlusion_gaps(s.gt)]
        results['sequences'][name] = {
            'count': args.seeds, 'frames': seqs[name][0].spec.num_frames, 'objects': seqs[name][0].spec.num_objects,
            'crossing_pairs': seqs[name][0].spec.crossings, 'gt_boxes': int(sum(len(s.gt) for s in seqs[name])),
            'occlusion_gaps': {'count': len(gaps), 'min': min(gaps, default=0), 'max': max(gaps, default=0),
                               'mean': float(np.mean(gaps)) if gaps else 0.0},
        }
        results['perfect_detections'][name] = evaluate(seqs[name], [ms.perfect_detections(s) for s in seqs[name]])
        print(name, 'perfect', {k: v['overall'] for k, v in results['perfect_detections'][name].items()}, flush=True)
    strip_frames, strip_seq = ms.perfect_detections(seqs['occluded'][0]), seqs['occluded'][0]
    if args.workdir:
        for name in ('clean', 'occluded'):
            chosen = seqs[name][: args.detector_seeds]
            if args.from_logs:
                frames, summary = logged_frames(len(chosen), tmp / name)
            else:
                frames, summary = detector_frames(Path(args.workdir), chosen, tmp / name)
            trackers = TRACKERS
            sweep = {f'vote_penalty_{p}': lambda f, p=p: ours(f, 'bytetrack', class_penalty=p) for p in PENALTIES}
            tuning = slice(0, len(chosen) - args.held_out)
            penalties = {k: v['overall'] for k, v in evaluate(chosen[tuning], frames[tuning], sweep).items()}
            duplicates = {f'duplicate_iou_{d}': lambda f, d=d: ours(f, 'bytetrack', duplicate_iou=d)
                          for d in DUPLICATE_IOUS}
            duplicate_sweep = {k: v['overall'] for k, v in evaluate(chosen[tuning], frames[tuning],
                                                                     duplicates).items()}
            held = slice(len(chosen) - args.held_out, len(chosen))
            held_out = {k: v['overall'] for k, v in evaluate(chosen[held], frames[held], trackers).items()}
            everything = evaluate(chosen, frames, trackers)
            held_seqs = {k: v['per_sequence'][held] for k, v in everything.items()}
            for k, v in everything.items():  # pooling the per-sequence counts gives motmetrics' figures
                assert np.allclose([pooled(v['per_sequence'])[m] for m in ('idf1', 'mota')],
                                   [v['overall'][m] for m in ('idf1', 'mota')]), k
            comparison = {
                'all': paired_bootstrap(everything['ours_bytetrack']['per_sequence'],
                                        everything['supervision_bytetrack']['per_sequence']),
                'held_out': paired_bootstrap(held_seqs['ours_bytetrack'], held_seqs['supervision_bytetrack'])}
            results['detector'][name] = {**everything, 'class_penalty_sweep': penalties,
                                         'duplicate_iou_sweep': duplicate_sweep, 'held_out': held_out,
                                         'ours_vs_supervision': comparison, 'detect_video': summary}
            print(name, 'ours vs supervision', json.dumps(comparison), flush=True)
            print(name, 'detector', {k: v['overall'] for k, v in results['detector'][name].items()
                                     if k in trackers}, flush=True)
            if name == 'occluded':
                strip_frames, strip_seq = frames[0], chosen[0]
        results['detector_workdir'] = args.workdir
    crossing_strip(strip_seq, strip_frames, ours(strip_frames, 'bytetrack'), out / 'crossing.png')
    (out / 'results.json').write_text(json.dumps(compact(results), indent=1) + '\n')
    print(f'wrote {out / "results.json"}, {out / "crossing.png"}')


if __name__ == '__main__':
    main()
