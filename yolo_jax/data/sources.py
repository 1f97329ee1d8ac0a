"""Where examples come from: one `load_split` for every dataset kind, as the input pipeline consumes them.

config.data.dataset selects the source:
    'mnist_detection'  the generated MNIST detection set (TFDS builder in mnist_detection.py), built on first use
                       into config.data.data_dir ('' = TFDS default). Boxes are the generator's integer boxes.
    'annotations'      the reference's text format (annotations.py): config.data.train_annotations /
                       test_annotations and config.data.class_names. Lines without boxes are skipped, as upstream.
    'voc/2007', 'coco/2017' (or another voc/... or coco/... config)
                       prepared TFDS detection sets (never downloaded here). Split mapping: voc train ->
                       'train+validation', test -> 'test'; coco train -> 'train', test -> 'validation'. VOC
                       'difficult' boxes are dropped (as the reference's voc_annotation.py does); COCO crowd boxes are
                       dropped.

Every element: {'image': uint8 (H, W, 3) RGB, 'boxes': float32 (N, 4) x1, y1, x2, y2 in pixels of that image,
'classes': int32 (N,), 'image_id': int64 (mnist_detection, coco) or string (voc: file name, annotations: path)}.
Order is deterministic. Each process reads a contiguous shard: the first (num_examples % process_count) shards
hold one example more (as `tfds.even_splits`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from yolo_jax.data import annotations as annotations_lib
from yolo_jax.data import mnist_detection
from yolo_jax.errors import ConfigError, MissingFileError

SPLITS = ('train', 'test')
# TF decodes these natively; other formats PIL reads are decoded through PIL.
_TF_IMAGE_FORMATS = annotations_lib.TF_IMAGE_FORMATS


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    """What the pipeline needs to know about a split."""

    num_examples: int  # examples in the whole split (all processes)
    class_names: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class _TfdsRules:
    splits: dict[str, str]
    image_id: str
    drop: str | None  # boolean objects/<drop> feature whose boxes are removed


def _tfds_rules(dataset: str) -> _TfdsRules:
    if dataset == 'mnist_detection':
        return _TfdsRules({'train': 'train', 'test': 'test'}, 'image/id', None)
    if dataset.startswith('voc'):
        return _TfdsRules({'train': 'train+validation', 'test': 'test'}, 'image/filename', 'is_difficult')
    if dataset.startswith('coco'):
        return _TfdsRules({'train': 'train', 'test': 'validation'}, 'image/id', 'is_crowd')
    raise ConfigError(
        f"config.data.dataset={dataset!r}: expected 'mnist_detection', 'annotations', 'voc/<year>' or 'coco/<year>'"
    )


def _data_dir(config: ml_collections.ConfigDict) -> str | None:
    return str(config.data.data_dir) or None


# ----------------------------------------------------------------------------------------------------------------
# Class names.


def get_class_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """Class names of config.data.dataset, without building or reading any examples."""
    dataset = str(config.data.dataset)
    if dataset == 'mnist_detection':
        return mnist_detection.CLASS_NAMES
    if dataset == 'annotations':
        if not config.data.class_names:
            raise ConfigError("config.data.class_names: dataset='annotations' needs a class-names file")
        return annotations_lib.read_class_names(config.data.class_names)
    _tfds_rules(dataset)  # validates the name
    builder = tfds.builder(dataset, data_dir=_data_dir(config))
    return tuple(builder.info.features['objects']['label'].names)


def prepare(config: ml_collections.ConfigDict) -> tuple[tuple[str, ...], str]:
    """Makes config.data.dataset ready to read and returns (its class names, a description of where they come
    from). Building the generated MNIST set is this explicit step (logged; once per data dir), never a side
    effect of loading."""
    dataset = str(config.data.dataset)
    if dataset == 'mnist_detection':
        logging.info('Preparing the MNIST detection set (built once into %s, then reused)',
                     config.data.data_dir or 'the TFDS data dir')
        builder = mnist_detection.prepare_mnist_detection(config)
        return mnist_detection.CLASS_NAMES, f'the MNIST detection set ({builder.info.full_name})'
    if dataset == 'annotations':
        return get_class_names(config), f'config.data.class_names ({config.data.class_names})'
    return get_class_names(config), f'the TFDS data set {dataset}'


def num_classes(config: ml_collections.ConfigDict) -> int:
    """len(get_class_names(config))."""
    return len(get_class_names(config))


# ----------------------------------------------------------------------------------------------------------------
# Conversions.


def normalized_to_pixel_xyxy(bbox: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """TFDS BBoxFeature rows (N, 4) normalized ymin, xmin, ymax, xmax -> float32 (N, 4) x1, y1, x2, y2 pixels."""
    bbox = tf.reshape(tf.cast(bbox, tf.float32), [-1, 4])
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    return tf.stack([bbox[:, 1] * w, bbox[:, 0] * h, bbox[:, 3] * w, bbox[:, 2] * h], axis=-1)


def tfds_detection_to_element(
    example: dict, *, image_id_key: str, drop_key: str | None = None, round_boxes: bool = False
) -> dict[str, tf.Tensor]:
    """A voc/coco-style TFDS example -> this module's element (see the module docstring).

    Args:
        example: {'image': (H, W, 3) uint8, image_id_key: scalar, 'objects': {'bbox': (N, 4) normalized
            ymin, xmin, ymax, xmax, 'label': (N,) int, optionally drop_key: (N,) bool}}.
        image_id_key: the feature to use as 'image_id'.
        drop_key: boxes whose objects[drop_key] is True are removed (VOC difficult, COCO crowd).
        round_boxes: round pixel coordinates to integers (mnist_detection stores integer boxes as float32
            fractions; rounding recovers them exactly).
    """
    image = example['image']
    shape = tf.shape(image)
    boxes = normalized_to_pixel_xyxy(example['objects']['bbox'], shape[0], shape[1])
    if round_boxes:
        boxes = tf.round(boxes)
    classes = tf.cast(example['objects']['label'], tf.int32)
    if drop_key is not None:
        keep = tf.logical_not(tf.cast(example['objects'][drop_key], tf.bool))
        boxes = tf.boolean_mask(boxes, keep)
        classes = tf.boolean_mask(classes, keep)
    return {'image': image, 'boxes': boxes, 'classes': classes, 'image_id': example[image_id_key]}


def shard_bounds(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[start, end) of this process's contiguous shard; the first num_examples % process_count get one more."""
    if not 0 <= process_index < process_count:
        raise ValueError(f'process_index {process_index} not in [0, process_count={process_count})')
    base, extra = divmod(num_examples, process_count)
    start = process_index * base + min(process_index, extra)
    return start, start + base + (process_index < extra)


# ----------------------------------------------------------------------------------------------------------------
# Loading.


def load_split(
    config: ml_collections.ConfigDict, split: str, *, process_index: int = 0, process_count: int = 1
) -> tuple[tf.data.Dataset, SplitInfo]:
    """split in {'train','test'}. Unbatched, deterministic order, this process's shard only.

    Elements: {'image': uint8 (H, W, 3) RGB, 'boxes': float32 (N, 4) x1,y1,x2,y2 in pixels of that image,
    'classes': int32 (N,), 'image_id': int64 or string scalar}.
    """
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    if not 0 <= process_index < process_count:
        raise ValueError(f'process_index {process_index} not in [0, process_count={process_count})')
    dataset = str(config.data.dataset)
    if dataset == 'annotations':
        return _load_annotations(config, split, process_index, process_count)
    rules = _tfds_rules(dataset)
    if dataset == 'mnist_detection':
        builder = mnist_detection.prepare_mnist_detection(config)
    else:
        builder = tfds.builder(dataset, data_dir=_data_dir(config))
    return _load_tfds(builder, dataset, rules, split, process_index, process_count)


def _load_tfds(
    builder: tfds.core.DatasetBuilder,
    dataset: str,
    rules: _TfdsRules,
    split: str,
    process_index: int,
    process_count: int,
) -> tuple[tf.data.Dataset, SplitInfo]:
    tfds_split = rules.splits[split]
    shard = tfds.even_splits(tfds_split, n=process_count)[process_index]
    try:
        # shuffle_files=False: files are interleaved in a fixed order (mnist_detection: strictly in example order).
        ds = builder.as_dataset(split=shard, shuffle_files=False)
    except (AssertionError, KeyError) as e:  # TFDS's "could not find data" / "splits is empty" errors
        if builder.is_prepared():
            raise
        raise MissingFileError(
            f'{dataset} is not prepared in {builder.data_dir_root}. This project never downloads it implicitly: '
            f'on a machine with network run `tfds build {dataset} --data_dir=<dir>` (COCO is ~20 GB), then set '
            f'config.data.data_dir=<dir>. ({e})'
        ) from e
    try:
        num_examples = int(builder.info.splits[tfds_split].num_examples)
    except (KeyError, ValueError):  # split sizes unknown (e.g. under tfds.testing.mock_data)
        num_examples = int(builder.as_dataset(split=tfds_split, shuffle_files=False).cardinality())
    convert = _tfds_converter(rules, round_boxes=dataset == 'mnist_detection')
    ds = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    class_names = tuple(builder.info.features['objects']['label'].names)
    logging.info(
        'Loaded %s %s (%s): %d examples, shard %d/%d',
        dataset,
        split,
        tfds_split,
        num_examples,
        process_index,
        process_count,
    )
    return ds, SplitInfo(num_examples=num_examples, class_names=class_names)


def _tfds_converter(rules: _TfdsRules, *, round_boxes: bool) -> Callable[[dict], dict]:
    def convert(example: dict) -> dict:
        return tfds_detection_to_element(
            example, image_id_key=rules.image_id, drop_key=rules.drop, round_boxes=round_boxes
        )

    return convert


def _load_annotations(
    config: ml_collections.ConfigDict, split: str, process_index: int, process_count: int
) -> tuple[tf.data.Dataset, SplitInfo]:
    path = config.data.train_annotations if split == 'train' else config.data.test_annotations
    if not path:
        raise ConfigError(f"config.data.{split}_annotations: dataset='annotations' needs an annotation file")
    class_names = get_class_names(config)
    records = annotations_lib.read_annotations(path, class_names)
    start, end = shard_bounds(len(records), process_index, process_count)
    ds = annotation_records_dataset(records[start:end])
    return ds, SplitInfo(num_examples=len(records), class_names=class_names)


def annotation_records_dataset(records: list[annotations_lib.AnnotationRecord]) -> tf.data.Dataset:
    """A dataset of elements (see the module docstring) reading the records' images; image_id = the path.

    read_annotations has already decoded every image with the same decoder, so a decode error here means the file
    changed since: an image whose size differs from the checked one (record.num_bytes) fails with an error naming
    the file, and so does any PIL-decoded image. (A TF decode error of a file rewritten in place with the same
    size is the one failure that cannot name it: TF op errors carry no input values.)
    """
    counts = np.array([len(r.classes) for r in records], np.int64)
    ends = np.cumsum(counts)
    flat_boxes = np.concatenate([r.boxes for r in records] + [np.zeros((0, 4), np.int32)]).astype(np.float32)
    flat_classes = np.concatenate([r.classes for r in records] + [np.zeros((0,), np.int32)]).astype(np.int32)
    use_pil = [r.image_format not in _TF_IMAGE_FORMATS for r in records]
    table = {
        'path': tf.constant([r.path for r in records], tf.string, shape=[len(records)]),
        'start': tf.constant(ends - counts, tf.int64, shape=[len(records)]),
        'end': tf.constant(ends, tf.int64, shape=[len(records)]),
        'use_pil': tf.constant(use_pil, tf.bool, shape=[len(records)]),
        'num_bytes': tf.constant([r.num_bytes for r in records], tf.int64, shape=[len(records)]),
    }
    boxes_t = tf.constant(flat_boxes.reshape(-1, 4))
    classes_t = tf.constant(flat_classes)

    def tf_decode(row: dict) -> tf.Tensor:
        data = tf.io.read_file(row['path'])
        size = tf.cast(tf.strings.length(data), tf.int64)
        unchanged = tf.debugging.Assert(
            tf.logical_or(row['num_bytes'] < 0, tf.equal(size, row['num_bytes'])),
            ['image file changed since the annotations were checked (size differs):', row['path']],
        )
        with tf.control_dependencies([unchanged]):
            return tf.io.decode_image(data, channels=3, expand_animations=False)

    def load(row: dict) -> dict:
        image = tf.cond(
            row['use_pil'],
            lambda: tf.numpy_function(_pil_decode, [row['path']], tf.uint8, stateful=False),
            lambda: tf_decode(row),
        )
        image = tf.ensure_shape(image, [None, None, 3])
        return {
            'image': image,
            'boxes': boxes_t[row['start'] : row['end']],
            'classes': classes_t[row['start'] : row['end']],
            'image_id': row['path'],
        }

    ds = tf.data.Dataset.from_tensor_slices(table)
    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _pil_decode(path: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB; a failure names the file (the error reaches the user through tf.data)."""
    from PIL import Image

    name = os.fsdecode(path)
    try:
        with Image.open(name) as im:
            return np.asarray(im.convert('RGB'), np.uint8)
    except Exception as e:
        raise ValueError(f'cannot decode image {name}: {e}') from None


# ----------------------------------------------------------------------------------------------------------------
# Export.


def export_split(
    config: ml_collections.ConfigDict,
    split: str,
    out_dir: str | os.PathLike,
    *,
    image_format: str = 'png',
    overwrite: bool = False,
) -> Path:
    """Writes a split of config.data.dataset (e.g. the generated MNIST set) as image files + annotation text.

    Returns the annotations.txt path; see annotations.export_dataset for the layout.
    """
    ds, info = load_split(config, split)
    return annotations_lib.export_dataset(
        tfds.as_numpy(ds), out_dir, info.class_names, image_format=image_format, overwrite=overwrite
    )
