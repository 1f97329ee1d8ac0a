"""Training input pipeline throughput (images/s) at 416 with and without augmentation.

    python benchmarks/input_pipeline.py [--out benchmarks/results/input_pipeline.json] [--source auto]

--source real uses yolo_jax.data.sources.load_split (configs/mnist.py); synthetic uses an in-memory source of
416x416 MNIST-like images (white canvas, 1..12 dark digit-sized patches with boxes); auto tries real and falls
back to synthetic. Epoch 0 is run once untimed (it fills the decoded-example cache and traces the maps); later
epochs are timed, iterating `.as_numpy_iterator()` as the trainer does.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from yolo_jax import input_pipeline  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class SyntheticSplitInfo:
    num_examples: int
    class_names: tuple[str, ...]


def synthetic_examples(n: int, size: int = 416, seed: int = 0) -> list[dict]:
    """MNIST-detection-like images: white canvas, 1..12 patches of side 14..112 with dark strokes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = np.full((size, size, 3), 255, np.uint8)
        k = int(rng.integers(1, 13))
        side = rng.choice([14, 22, 28, 42, 56, 84, 112], k)
        boxes = []
        for s in side:
            x1, y1 = rng.integers(0, size - s, 2)
            m = max(1, s // 7)
            image[y1 + m : y1 + s - m, x1 + s // 2 - m : x1 + s // 2 + m] = 0  # a stroke
            image[y1 + m : y1 + 2 * m, x1 + m : x1 + s - m] = 0
            boxes.append([x1, y1, x1 + s, y1 + s])
        out.append(
            dict(
                image=image,
                boxes=np.asarray(boxes, np.float32),
                classes=rng.integers(0, 10, k).astype(np.int32),
                image_id=i,
            )
        )
    return out


def install_synthetic_source(n: int) -> None:
    """Replaces sources.load_split (or stands in the module) with an in-memory source of n images."""
    examples = synthetic_examples(n)
    signature = {
        'image': tf.TensorSpec([None, None, 3], tf.uint8),
        'boxes': tf.TensorSpec([None, 4], tf.float32),
        'classes': tf.TensorSpec([None], tf.int32),
        'image_id': tf.TensorSpec([], tf.int64),
    }

    def load_split(config, split, *, process_index=0, process_count=1):
        shard = examples[process_index::process_count]
        ds = tf.data.Dataset.from_generator(lambda: iter(shard), output_signature=signature)
        ds = ds.apply(tf.data.experimental.assert_cardinality(len(shard)))
        return ds, SyntheticSplitInfo(len(examples), tuple(str(c) for c in range(10)))

    from yolo_jax.data import sources

    sources.load_split = load_split
    sources.class_source = lambda config: (tuple(str(c) for c in range(10)), 'the synthetic source')
    sources.prepare = lambda config: None


def get_config():
    spec = importlib.util.spec_from_file_location('mnist_config', REPO / 'configs' / 'mnist.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def time_epochs(config, batch_size: int, epochs: int) -> dict:
    """Images/s over `epochs` timed epochs after one untimed warm-up epoch, with and without the per-epoch
    dataset construction (tracing the maps), which a long epoch amortises."""
    data = input_pipeline.Data(config)  # decoded and cached once, as in training
    for _ in data.train_epoch(0, batch_size).as_numpy_iterator():
        pass
    images, build, iterate = 0, 0.0, 0.0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        ds = data.train_epoch(epoch, batch_size)
        build += time.perf_counter() - start
        start = time.perf_counter()
        for batch in ds.as_numpy_iterator():
            images += batch['image'].shape[0]
        iterate += time.perf_counter() - start
    return dict(
        images_per_s=images / iterate,
        images_per_s_incl_build=images / (build + iterate),
        build_s_per_epoch=build / epochs,
        images_per_epoch=images // epochs,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default=str(REPO / 'benchmarks' / 'results' / 'input_pipeline.json'))
    parser.add_argument('--source', choices=['auto', 'real', 'synthetic'], default='auto')
    parser.add_argument('--num_images', type=int, default=200, help='synthetic source size')
    parser.add_argument('--batch_size', type=int, default=4)
    parser.add_argument('--epochs', type=int, default=2, help='timed epochs')
    args = parser.parse_args()

    config = get_config()
    source = args.source
    if source in ('auto', 'real'):
        try:
            from yolo_jax.data import sources

            sources.load_split(config, 'train')
            source = 'real'
        except Exception as e:  # noqa: BLE001 - any failure means "not available here"
            if args.source == 'real':
                raise
            print(f'real source unavailable ({type(e).__name__}: {e}); using the synthetic one')
            source = 'synthetic'
    if source == 'synthetic':
        install_synthetic_source(args.num_images)

    rows = []
    for augment in (True, False):
        config.data.augment = augment
        rows.append(dict(augment=augment, **time_epochs(config, args.batch_size, args.epochs)))

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    print(
        f'input {config.model.input_size}, batch {args.batch_size}, {source} source, {cpus} CPUs, '
        f'load average {os.getloadavg()[0]:.1f}'
    )
    print(f'{"augment":>8} {"images/s":>9} {"incl. build":>12} {"build s/epoch":>14} {"images/epoch":>13}')
    for r in rows:
        print(
            f'{str(r["augment"]):>8} {r["images_per_s"]:>9.1f} {r["images_per_s_incl_build"]:>12.1f} '
            f'{r["build_s_per_epoch"]:>14.2f} {r["images_per_epoch"]:>13}'
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(
        input_size=config.model.input_size,
        batch_size=args.batch_size,
        source=source,
        cpus=cpus,
        tf=tf.__version__,
        machine=platform.processor() or platform.machine(),
    )
    out.write_text(json.dumps(dict(meta=meta, results=rows), indent=2) + '\n')
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
