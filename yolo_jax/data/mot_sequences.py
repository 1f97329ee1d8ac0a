"""Synthetic tracking sequences with known identities: MNIST-style digits moving on a white canvas.

    python -m yolo_jax.data.mot_sequences --output=DIR [--seed=0 --frames=80 --objects=8 --crossings=2 --occluders=2]

Each object is a digit of the split's pool (black on white, resized to a side of `sides` pixels; its box is the
whole patch, as in the MNIST detection set) with a constant velocity that changes once (speed times 0.7-1.4) at a
random frame. Objects start inside the canvas or enter it from the left or right edge later, and leave when they
move out. `crossings` pairs of objects of the same digit class and side cross head-on: they meet at a random point
and frame (their boxes overlap for several frames; patches are combined with a per-pixel minimum, so both digits
stay visible). `occluders` vertical grey bars (drawn over the objects) hide objects that pass behind them for a
few frames (about bar width / speed: 3-15 frames at the defaults).

Ground truth lists an object in a frame when at least `min_visibility` of its box area lies inside the canvas and
outside the bars; its box is clipped to the canvas. Everything is a function of the spec (seed included).

Written (`write_sequence`): `img1/000001.png ...` (MOTChallenge's layout), `gt/gt.txt`
(`frame,id,x,y,w,h,1,-1,-1,-1`, frames 1-based, x, y 1-based as yolo_jax.tracking.mot_lines writes),
`sequence.json` (the spec, each object's id / digit class / side, per-row classes and visibilities), and with
OpenCV `sequence.avi` (MJPG at quality 100: mp4v blurs small digits).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from yolo_jax.data.digits import Digits, load_digits, resize_uint8

OCCLUDER_GREY = 128


@dataclasses.dataclass(frozen=True)
class SequenceSpec:
    """A sequence to generate. Sizes in pixels, speeds in pixels per frame.

    num_frames; size: the square canvas side; num_objects: objects in all (crossing pairs included);
    crossings: pairs (of the objects) that cross head-on; occluders: vertical bars, each occluder_width wide
    (a (min, max) range); sides: digit sides to draw from; speed: (min, max) of the initial speed;
    min_visibility: least visible box fraction of a ground-truth row; digit_source / split: the digits
    (yolo_jax.data.digits); seed.
    """

    num_frames: int = 80
    size: int = 416
    num_objects: int = 8
    crossings: int = 2
    occluders: int = 0
    occluder_width: tuple[int, int] = (24, 36)
    sides: tuple[int, ...] = (28, 42, 56)
    speed: tuple[float, float] = (4.0, 8.0)
    min_visibility: float = 0.5
    digit_source: str = 'sklearn'
    split: str = 'test'
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class MovingObject:
    """id (1-based), label (digit class), side (pixels), patch (side, side) uint8, top-left corners
    (num_frames, 2) float x, y per frame (anywhere, also outside the canvas)."""

    id: int
    label: int
    side: int
    patch: np.ndarray
    corners: np.ndarray


@dataclasses.dataclass(frozen=True)
class Sequence:
    """A generated sequence: frames (T, S, S, 3) uint8; gt: one (frame 1-based, id, x1, y1, x2, y2, class,
    visibility) float row per visible object and frame, frame-major; occluders: (K, 2) x ranges [x1, x2)."""

    spec: SequenceSpec
    frames: np.ndarray
    gt: np.ndarray
    objects: tuple[MovingObject, ...]
    occluders: np.ndarray


def _trajectory(start: np.ndarray, velocity: np.ndarray, t_start: int, num_frames: int,
                change_at: int, factor: float) -> np.ndarray:
    """(num_frames, 2) positions: `start` at frame t_start, `velocity` per frame, times `factor` from change_at
    on (both directions in time from t_start)."""
    t = np.arange(num_frames, dtype=np.float64)
    # Distance travelled from t_start: piecewise linear in t with the slope changing at change_at.
    def travelled(x: np.ndarray) -> np.ndarray:
        return np.where(x < change_at, x, change_at + (x - change_at) * factor)
    steps = travelled(t) - travelled(np.float64(t_start))
    return start[None, :] + steps[:, None] * velocity[None, :]


def _objects(spec: SequenceSpec, digits: Digits, rng: np.random.Generator) -> list[MovingObject]:
    """The moving objects: `crossings` head-on pairs first, then independent movers."""
    T, S = spec.num_frames, spec.size
    objects: list[MovingObject] = []

    def patch_of(label: int | None, side: int) -> tuple[int, np.ndarray]:
        pool = np.arange(len(digits)) if label is None else np.flatnonzero(digits.labels == label)
        k = int(rng.choice(pool))
        return int(digits.labels[k]), resize_uint8(digits.images[k], side)

    n_pairs = min(spec.crossings, spec.num_objects // 2)
    for _ in range(n_pairs):
        side = int(rng.choice(spec.sides))
        meet = rng.uniform(0.3, 0.7, 2) * S - side / 2
        t_meet = int(rng.integers(int(0.3 * T), int(0.7 * T) + 1))
        speed = rng.uniform(*spec.speed)
        dy = rng.uniform(-0.3, 0.3) * speed
        label, _ = patch_of(None, side)
        for sign in (1, -1):
            _, patch = patch_of(label, side)  # the same class, another image of it
            offset = np.array([0.0, rng.uniform(-0.15, 0.15) * side])
            velocity = np.array([sign * speed, sign * dy])
            # The speed changes away from the crossing, so that both sides of it are constant-velocity.
            change = int(rng.choice([max(t_meet - 15, 0), min(t_meet + 15, T)]))
            factor = rng.uniform(0.7, 1.4)
            corners = _trajectory(meet + offset, velocity, t_meet, T, change, factor)
            objects.append(MovingObject(len(objects) + 1, label, side, patch, corners))
    while len(objects) < spec.num_objects:
        side = int(rng.choice(spec.sides))
        label, patch = patch_of(None, side)
        speed = rng.uniform(*spec.speed)
        angle = rng.uniform(-0.35, 0.35) + (np.pi if rng.uniform() < 0.5 else 0.0)  # mostly horizontal
        velocity = speed * np.array([np.cos(angle), np.sin(angle)])
        if rng.uniform() < 0.5:  # inside from the first frame
            t0, start = 0, rng.uniform(0, S - side, 2)
        else:  # enters from the edge it moves away from, at a random frame
            t0 = int(rng.integers(1, max(2, T // 2)))
            x = -side + 1.0 if velocity[0] > 0 else S - 1.0
            start = np.array([x, rng.uniform(0.1 * S, 0.9 * S - side)])
        change = int(rng.integers(1, T))
        corners = _trajectory(start, velocity, t0, T, change, rng.uniform(0.7, 1.4))
        corners[:t0] = np.nan  # not yet there
        objects.append(MovingObject(len(objects) + 1, label, side, patch, corners))
    return objects


def _occluders(spec: SequenceSpec, rng: np.random.Generator) -> np.ndarray:
    """(K, 2) x ranges of vertical bars spread over the canvas (one per equal-width slot, placed within it)."""
    out = []
    slot = spec.size / max(spec.occluders, 1)
    for k in range(spec.occluders):
        w = int(rng.integers(spec.occluder_width[0], spec.occluder_width[1] + 1))
        x = int(k * slot + rng.uniform(0, max(slot - w, 0)))
        out.append((x, min(x + w, spec.size)))
    return np.asarray(out, np.int64).reshape(-1, 2)


def visible_fraction(box: np.ndarray, size: int, occluders: np.ndarray) -> float:
    """Share of the xyxy `box` area inside the [0, size) canvas and outside every vertical bar [x1, x2)."""
    x1, y1, x2, y2 = box
    area = (x2 - x1) * (y2 - y1)
    cx1, cx2, cy1, cy2 = max(x1, 0), min(x2, size), max(y1, 0), min(y2, size)
    if cx2 <= cx1 or cy2 <= cy1 or area <= 0:
        return 0.0
    width = cx2 - cx1
    for o1, o2 in occluders:  # bars do not overlap each other
        width -= max(0.0, min(cx2, o2) - max(cx1, o1))
    return float(width * (cy2 - cy1) / area)


def generate(spec: SequenceSpec) -> Sequence:
    """Renders the sequence and its ground truth (deterministic in `spec`)."""
    rng = np.random.default_rng(spec.seed)
    digits = load_digits(spec.digit_source, spec.split)
    objects = _objects(spec, digits, rng)
    occluders = _occluders(spec, rng)
    T, S = spec.num_frames, spec.size
    frames = np.full((T, S, S), 255, np.uint8)
    gt = []
    for t in range(T):
        canvas = frames[t]
        for obj in objects:
            if np.isnan(obj.corners[t]).any():
                continue
            x, y = (int(round(v)) for v in obj.corners[t])
            box = np.array([x, y, x + obj.side, y + obj.side], np.float64)
            cx1, cy1, cx2, cy2 = max(x, 0), max(y, 0), min(x + obj.side, S), min(y + obj.side, S)
            if cx2 <= cx1 or cy2 <= cy1:
                continue
            region = canvas[cy1:cy2, cx1:cx2]
            region[...] = np.minimum(region, obj.patch[cy1 - y : cy2 - y, cx1 - x : cx2 - x])
            vis = visible_fraction(box, S, occluders)
            if vis >= spec.min_visibility:
                gt.append([t + 1, obj.id, cx1, cy1, cx2, cy2, obj.label, vis])
        for o1, o2 in occluders:
            canvas[:, o1:o2] = OCCLUDER_GREY
    rgb = np.repeat(frames[..., None], 3, axis=-1)
    return Sequence(spec, rgb, np.asarray(gt, np.float64).reshape(-1, 8), tuple(objects), occluders)


def perfect_detections(seq: Sequence) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per frame (boxes (N, 4) xyxy, scores (N,) = 1, classes (N,)) = the ground truth, ordered by a per-frame
    seeded shuffle so that no tracker can lean on the row order."""
    rng = np.random.default_rng(seq.spec.seed + 1)
    out = []
    for t in range(1, seq.spec.num_frames + 1):
        rows = seq.gt[seq.gt[:, 0] == t]
        rows = rows[rng.permutation(len(rows))]
        out.append((rows[:, 2:6], np.ones(len(rows)), rows[:, 6].astype(np.int64)))
    return out


def occlusion_gaps(gt: np.ndarray) -> list[int]:
    """Lengths (frames) of every gap inside an identity's ground truth (absent frames between two present ones)."""
    gaps = []
    for i in np.unique(gt[:, 1]):
        frames = np.sort(gt[gt[:, 1] == i, 0])
        gaps += [int(d - 1) for d in np.diff(frames) if d > 1]
    return gaps


def write_sequence(seq: Sequence, out_dir: str | Path, *, video: bool = True) -> Path:
    """Writes img1/%06d.png, gt/gt.txt, sequence.json and (with OpenCV and `video`) sequence.avi into out_dir."""
    from PIL import Image  # noqa: PLC0415

    from yolo_jax import tracking  # noqa: PLC0415

    out = Path(out_dir)
    (out / 'img1').mkdir(parents=True, exist_ok=True)
    (out / 'gt').mkdir(exist_ok=True)
    for t, frame in enumerate(seq.frames, start=1):
        Image.fromarray(frame).save(out / 'img1' / f'{t:06d}.png')
    lines = []
    for t in range(1, seq.spec.num_frames + 1):
        rows = seq.gt[seq.gt[:, 0] == t]
        lines += tracking.mot_lines(t, rows[:, 1].astype(np.int64), rows[:, 2:6], np.ones(len(rows)))
    tracking.write_mot(out / 'gt' / 'gt.txt', lines)
    meta = {
        'spec': dataclasses.asdict(seq.spec),
        'objects': [{'id': o.id, 'class': o.label, 'side': o.side} for o in seq.objects],
        'occluders': seq.occluders.tolist(),
        'gt_classes': seq.gt[:, 6].astype(int).tolist(), 'gt_visibility': seq.gt[:, 7].round(4).tolist(),
        'occlusion_gaps': occlusion_gaps(seq.gt),
    }
    (out / 'sequence.json').write_text(json.dumps(meta, indent=1) + '\n')
    if video:
        try:
            import cv2  # noqa: PLC0415
        except ImportError:
            return out
        writer = cv2.VideoWriter(str(out / 'sequence.avi'), cv2.VideoWriter_fourcc(*'MJPG'), 25.0,
                                 (seq.spec.size, seq.spec.size))
        writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 100)
        for frame in seq.frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
    return out


def main() -> None:
    """The command: flags → generate → write_sequence."""
    from absl import flags  # noqa: PLC0415

    f = flags.FLAGS
    spec = SequenceSpec(num_frames=f.frames, size=f.size, num_objects=f.objects, crossings=f.crossings,
                        occluders=f.occluders, min_visibility=f.min_visibility, digit_source=f.digit_source,
                        seed=f.seed)
    seq = generate(spec)
    out = write_sequence(seq, f.output)
    print(f'{spec.num_frames} frames, {len(seq.objects)} objects, {len(seq.gt)} ground-truth boxes → {out}')


def _define_flags() -> None:
    """The generator's own flags (cli.run adds --verbose; there is no config)."""
    from absl import flags  # noqa: PLC0415

    d = SequenceSpec()
    flags.DEFINE_string('output', None, 'Directory to write the sequence into.', required=True)
    flags.DEFINE_integer('seed', d.seed, 'Random seed: the whole sequence is a function of the flags.')
    flags.DEFINE_integer('frames', d.num_frames, 'Number of frames.', lower_bound=1)
    flags.DEFINE_integer('size', d.size, 'Canvas side in pixels.', lower_bound=64)
    flags.DEFINE_integer('objects', d.num_objects, 'Objects in all (crossing pairs included).', lower_bound=0)
    flags.DEFINE_integer('crossings', d.crossings, 'Pairs of same-class objects that cross head-on.', lower_bound=0)
    flags.DEFINE_integer('occluders', d.occluders, 'Vertical bars that hide objects passing behind.', lower_bound=0)
    flags.DEFINE_float('min_visibility', d.min_visibility, 'Least visible box fraction of a ground-truth row.')
    flags.DEFINE_string('digit_source', d.digit_source, 'Digits: sklearn, tfds, auto or a path (data/digits.py).')


if __name__ == '__main__':
    from yolo_jax import cli  # noqa: PLC0415

    cli.run(main, _define_flags, config=False)
