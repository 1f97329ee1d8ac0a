"""Images/s of the vectorised TF target encoder vs the per-box NumPy loop (the reference's algorithm).

    python benchmarks/targets.py [--out benchmarks/results/targets.json] [--seconds 3]

YOLOv3 at 416 with 10 classes and max_bbox_per_scale 100 (the MNIST setting), MNIST-like box sets of 1, 6 and
12 boxes. The loop is the test oracle (tests/test_targets.py: float64 arrays cast to float32 at the end, as the
encoder returns). The encoder is timed per image (a tf.function call per image, as a per-example map would) and
per batch (one call for B padded images, as the input pipeline does). The "floor" is the rate of merely
producing the dense zero-filled label tensors: the batched encoder runs near it, so its cost is memory writes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from yolo_jax.data import targets  # noqa: E402
from yolo_jax.defaults import YOLOV3_ANCHORS  # noqa: E402
from yolo_jax.spec import DetectionSpec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def load_oracle():
    spec = importlib.util.spec_from_file_location('test_targets', REPO / 'tests' / 'test_targets.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.loop_encode


def box_sets(rng: np.random.Generator, count: int, k: int, size: int = 416):
    """`count` MNIST-like sets of k integer-cornered boxes with sides in {14, ..., 112}."""
    out = []
    for _ in range(count):
        side = rng.choice([14, 22, 28, 42, 56, 84, 112], (k, 1))
        x1 = rng.integers(0, size - side, (k, 2))
        out.append((np.concatenate([x1, x1 + side], -1).astype(np.float32), rng.integers(0, 10, k).astype(np.int32)))
    return out


def rate(fn, images_per_call: int, seconds: float) -> float:
    """Images/s of fn() over at least `seconds` (after one warm-up call)."""
    fn()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        calls += 1
    return calls * images_per_call / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default=str(REPO / 'benchmarks' / 'results' / 'targets.json'))
    parser.add_argument('--seconds', type=float, default=3.0, help='time per measurement')
    parser.add_argument('--batch', type=int, default=64, help='images per batched call')
    args = parser.parse_args()

    case = dict(input_size=416, strides=(8, 16, 32), anchors=YOLOV3_ANCHORS, num_classes=10)
    spec = DetectionSpec(416, (8, 16, 32), YOLOV3_ANCHORS, tuple(str(i) for i in range(10)))
    params = targets.TargetParams(spec, max_bbox_per_scale=100)
    loop_encode = load_oracle()
    single = targets.make_encoder(params, batched=False)
    batched = targets.make_encoder(params, batched=True)
    rng = np.random.default_rng(0)
    # Floor: producing the dense zero-filled float32 labels alone (~640 KB per image at 416), no encoding. The
    # batch size is a tensor input so that the zeros are not constant-folded away.
    shapes = targets.grid_shapes(params)
    dense_zeros = tf.function(lambda n: [tf.zeros(tf.concat([[n], shape], 0)) + 0.0 for shape in shapes])
    floor = rate(lambda: dense_zeros(tf.constant(args.batch)), args.batch, args.seconds)

    rows = []
    for k in (1, 6, 12):
        sets = box_sets(rng, args.batch, k)
        it = iter(range(10**9))

        def loop_one(sets=sets, it=it):
            b, c = sets[next(it) % len(sets)]
            return loop_encode(b, c, max_bbox_per_scale=100, **case)

        tf_sets = [(tf.constant(b), tf.constant(c)) for b, c in sets]

        def tf_one(tf_sets=tf_sets, it=it):
            return single(*tf_sets[next(it) % len(tf_sets)])

        boxes = tf.constant(np.stack([b for b, _ in sets]))
        classes = tf.constant(np.stack([c for _, c in sets]))
        loop = rate(loop_one, 1, args.seconds)
        one = rate(tf_one, 1, args.seconds)
        batch = rate(lambda boxes=boxes, classes=classes: batched(boxes, classes), args.batch, args.seconds)
        rows.append(
            dict(
                boxes=k,
                loop_images_s=loop,
                tf_per_image_images_s=one,
                tf_batched_images_s=batch,
                speedup_per_image=one / loop,
                speedup_batched=batch / loop,
                dense_zeros_floor_images_s=floor,
            )
        )

    print(f'YOLOv3 416, C=10, batch {args.batch} for the batched encoder; {os.cpu_count()} CPUs')
    print(f'floor (only writing the dense zero labels, no encoding): {floor:.0f} images/s')
    print(
        f'{"boxes":>5} {"loop img/s":>11} {"tf/img img/s":>13} {"tf batch img/s":>15} {"x per-img":>10} {"x batch":>8}'
    )
    for r in rows:
        print(
            f'{r["boxes"]:>5} {r["loop_images_s"]:>11.0f} {r["tf_per_image_images_s"]:>13.0f} '
            f'{r["tf_batched_images_s"]:>15.0f} {r["speedup_per_image"]:>10.1f} {r["speedup_batched"]:>8.1f}'
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(
        input_size=416,
        num_classes=10,
        batch=args.batch,
        cpus=os.cpu_count(),
        tf=tf.__version__,
        machine=platform.processor() or platform.machine(),
    )
    out.write_text(json.dumps(dict(meta=meta, results=rows), indent=2) + '\n')
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
