"""Where examples come from: one `load_split` for every dataset kind, as the input pipeline consumes them.

config.data.dataset selects the source:
    'mnist_detection'  the generated MNIST detection set (TFDS builder in mnist_detection.py), built on first use
                       into config.data.data_dir ('' = TFDS default). Boxes are the generator's integer boxes.
    'annotations'      the reference's text format (annotations.py): config.data.train_annotations /
                       test_annotations and config.data.class_names. Lines without boxes are skipped, as upstream.
    'coco_json'        a COCO-format JSON + image folder (coco_json.py): config.data.train_annotations /
                       test_annotations are the JSON files, config.data.train_images / test_images the image folders
                       ('' = the JSON's folder). Class names from the JSON's categories (sorted by id).
    'yolo_txt'         YOLO-format labels (yolo_txt.py): config.data.train_images / test_images (an image folder or a
                       list file of image paths), one `cls cx cy w h` (normalised) label file per image, and
                       config.data.class_names.
    'voc/2007', 'coco/2017' (or another voc/... or coco/... config; 'voc/2007+voc/2012' trains on both)
                       prepared TFDS detection sets (never downloaded here). Split mapping: voc train ->
                       'train+validation', test -> 'test'; coco train -> 'train', test -> 'validation'; any other
                       split name goes to TFDS as it is (e.g. 'validation', 'test[:100]'). With '+', the train split
                       concatenates every set's train split, other splits come from the first set. VOC
                       'difficult' and COCO crowd boxes are kept and flagged in 'difficult'.

Every element: {'image': uint8 (H, W, 3) RGB, 'boxes': float32 (N, 4) x1, y1, x2, y2 in pixels of that image,
'classes': int32 (N,), 'difficult': bool (N,) (VOC difficult / COCO iscrowd: ignored by evaluation, dropped by
training), 'image_id': int64 (mnist_detection, coco) or string (voc: file name; files: the image path)}.
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
from yolo_jax.data import coco_json, mnist_detection, yolo_txt
from yolo_jax.errors import ConfigError, MissingFileError

SPLITS = ('train', 'test')  # the names every source knows; TFDS sets take their own split names too
FILE_DATASETS = ('annotations', 'coco_json', 'yolo_txt')
COCO_CLASS_NAMES = (
    'person', 'bicycle', 'car', 'motorbike', 'aeroplane', 'bus', 'train', 'truck', 'boat', 'traffic light',
    'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
    'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee',
    'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
    'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple',
    'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'sofa',
    'pottedplant', 'bed', 'diningtable', 'toilet', 'tvmonitor', 'laptop', 'mouse', 'remote', 'keyboard',
    'cell phone', 'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors',
    'teddy bear', 'hair drier', 'toothbrush',
)  # Darknet's coco.names, in the order of the 80 outputs of its COCO weights

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
    flag: str | None  # boolean objects/<flag> feature: boxes flagged 'difficult' (VOC difficult, COCO crowd)


def _tfds_rules(dataset: str) -> _TfdsRules:
    if dataset == 'mnist_detection':
        return _TfdsRules({'train': 'train', 'test': 'test'}, 'image/id', None)
    if dataset.startswith('voc'):
        return _TfdsRules({'train': 'train+validation', 'test': 'test'}, 'image/filename', 'is_difficult')
    if dataset.startswith('coco'):
        return _TfdsRules({'train': 'train', 'test': 'validation'}, 'image/id', 'is_crowd')
    raise ConfigError(
        f"config.data.dataset={dataset!r}: expected 'mnist_detection', 'annotations', 'coco_json', 'yolo_txt', "
        "'voc/<year>' (or 'voc/2007+voc/2012') or 'coco/<year>'"
    )


def _data_dir(config: ml_collections.ConfigDict) -> str | None:
    return str(config.data.data_dir) or None


# ----------------------------------------------------------------------------------------------------------------
# Class names.


def get_class_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """Class names of config.data.dataset, without building or reading any examples (coco_json: reads the JSON's
    categories)."""
    dataset = str(config.data.dataset)
    if dataset == 'mnist_detection':
        return mnist_detection.CLASS_NAMES
    if dataset in ('annotations', 'yolo_txt'):
        if not config.data.class_names:
            raise ConfigError(f'config.data.class_names: dataset={dataset!r} needs a class-names file')
        return annotations_lib.read_class_names(config.data.class_names)
    if dataset == 'coco_json':  # the train JSON's categories, or the test JSON's when there is no train JSON
        split = 'train' if config.data.train_annotations else 'test'
        return coco_json.read_categories(_file_source_paths(config, split)[0])
    names = None
    for part in dataset.split('+'):
        _tfds_rules(part)  # validates the name
        got = tuple(tfds.builder(part, data_dir=_data_dir(config)).info.features['objects']['label'].names)
        if part.startswith('coco') and got == tuple(str(i) for i in range(len(COCO_CLASS_NAMES))):
            got = COCO_CLASS_NAMES  # an unprepared builder knows only the count: the names in the same order
        if names is not None and got != names:
            raise ConfigError(f'config.data.dataset={dataset!r}: the sets have different classes')
        names = got
    return names


def class_source(config: ml_collections.ConfigDict) -> tuple[tuple[str, ...], str]:
    """(class names of config.data.dataset, a description of where they come from), without building or reading
    any examples: cheap enough to check a config against in the first seconds of a run."""
    dataset = str(config.data.dataset)
    if dataset == 'mnist_detection':
        return mnist_detection.CLASS_NAMES, 'the MNIST detection set'
    if dataset in ('annotations', 'yolo_txt'):
        return get_class_names(config), f'config.data.class_names ({config.data.class_names})'
    if dataset == 'coco_json':
        return get_class_names(config), 'the COCO JSON categories'
    return get_class_names(config), f'the TFDS data set {dataset}'


def prepare(config: ml_collections.ConfigDict) -> None:
    """Makes config.data.dataset ready to read. Building the generated MNIST set is this explicit step (logged; once
    per data dir), never a side effect of loading; the other data sets need no preparation here."""
    if str(config.data.dataset) == 'mnist_detection':
        logging.info('Preparing the MNIST detection set (built once into %s, then reused)',
                     config.data.data_dir or 'the TFDS data dir')
        mnist_detection.prepare_mnist_detection(config)


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
    example: dict,
    *,
    image_id_key: str,
    drop_key: str | None = None,
    flag_key: str | None = None,
    round_boxes: bool = False,
) -> dict[str, tf.Tensor]:
    """A voc/coco-style TFDS example -> this module's element (see the module docstring).

    Args:
        example: {'image': (H, W, 3) uint8, image_id_key: scalar, 'objects': {'bbox': (N, 4) normalized
            ymin, xmin, ymax, xmax, 'label': (N,) int, optionally drop_key: (N,) bool}}.
        image_id_key: the feature to use as 'image_id'.
        drop_key: boxes whose objects[drop_key] is True are removed.
        flag_key: boxes whose objects[flag_key] is True are kept with 'difficult' = True (VOC difficult, COCO crowd).
        round_boxes: round pixel coordinates to integers (mnist_detection stores integer boxes as float32
            fractions; rounding recovers them exactly).
    """
    image = example['image']
    shape = tf.shape(image)
    boxes = normalized_to_pixel_xyxy(example['objects']['bbox'], shape[0], shape[1])
    if round_boxes:
        boxes = tf.round(boxes)
    classes = tf.cast(example['objects']['label'], tf.int32)
    if flag_key is not None:
        difficult = tf.reshape(tf.cast(example['objects'][flag_key], tf.bool), [-1])
    else:
        difficult = tf.zeros(tf.shape(classes), tf.bool)
    if drop_key is not None:
        keep = tf.logical_not(tf.cast(example['objects'][drop_key], tf.bool))
        boxes = tf.boolean_mask(boxes, keep)
        classes = tf.boolean_mask(classes, keep)
        difficult = tf.boolean_mask(difficult, keep)
    return {'image': image, 'boxes': boxes, 'classes': classes, 'difficult': difficult,
            'image_id': example[image_id_key]}


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
    """split: 'train' or 'test' (any source), or another split name of a TFDS set. Unbatched, deterministic
    order, this process's shard only.

    Elements: {'image': uint8 (H, W, 3) RGB, 'boxes': float32 (N, 4) x1,y1,x2,y2 in pixels of that image,
    'classes': int32 (N,), 'difficult': bool (N,), 'image_id': int64 or string scalar}.
    """
    dataset = str(config.data.dataset)
    if not isinstance(split, str) or not split or (
            split not in SPLITS and (dataset in FILE_DATASETS or dataset == 'mnist_detection')):
        raise ValueError(f'split must be one of {SPLITS} for config.data.dataset={dataset!r}, got {split!r}')
    if not 0 <= process_index < process_count:
        raise ValueError(f'process_index {process_index} not in [0, process_count={process_count})')
    if dataset in FILE_DATASETS:
        return _load_files(config, split, process_index, process_count)
    for part in dataset.split('+'):
        _tfds_rules(part)  # validates every name before any data is read
    parts = dataset.split('+') if split == 'train' else dataset.split('+')[:1]
    loaded = []
    for part in parts:
        rules = _tfds_rules(part)
        if part == 'mnist_detection':
            builder = mnist_detection.prepare_mnist_detection(config)
        else:
            builder = tfds.builder(part, data_dir=_data_dir(config))
        loaded.append(_load_tfds(builder, part, rules, split, process_index, process_count,
                                 build=' '.join(dataset.split('+'))))
    ds, info = loaded[0]
    for other, other_info in loaded[1:]:
        if other_info.class_names != info.class_names:
            raise ConfigError(f'config.data.dataset={dataset!r}: the sets have different classes')
        ds = ds.concatenate(other)
        info = SplitInfo(info.num_examples + other_info.num_examples, info.class_names)
    return ds, info


def _load_tfds(
    builder: tfds.core.DatasetBuilder,
    dataset: str,
    rules: _TfdsRules,
    split: str,
    process_index: int,
    process_count: int,
    build: str,
) -> tuple[tf.data.Dataset, SplitInfo]:
    """build: the set names for the `tfds build` command in the not-prepared message."""
    tfds_split = rules.splits.get(split, split)
    shard = tfds.even_splits(tfds_split, n=process_count)[process_index]
    try:
        # shuffle_files=False: files are interleaved in a fixed order (mnist_detection: strictly in example order).
        ds = builder.as_dataset(split=shard, shuffle_files=False)
    except (AssertionError, KeyError) as e:  # TFDS's "could not find data" / "splits is empty" errors
        if builder.is_prepared():
            raise
        raise MissingFileError(
            f'{dataset} is not prepared in {builder.data_dir_root}. This project never downloads it implicitly: '
            f'on a machine with network run `tfds build {build} --data_dir=<dir>` (COCO is ~20 GB; the archives '
            f'are downloaded into <dir>/downloads and can be deleted after the build), then set '
            f'config.data.data_dir=<dir> (or copy <dir>/{dataset.split("/")[0]} into {builder.data_dir_root}). ({e})'
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
            example, image_id_key=rules.image_id, flag_key=rules.flag, round_boxes=round_boxes
        )

    return convert


def _file_source_paths(config: ml_collections.ConfigDict, split: str) -> tuple[str, str]:
    """(annotation file, image folder or list) of a file data set's split; raises naming the missing field."""
    dataset = str(config.data.dataset)
    annotations_path = str(config.data[f'{split}_annotations'])
    images = str(config.data[f'{split}_images'])
    if dataset in ('annotations', 'coco_json') and not annotations_path:
        what = 'an annotation file' if dataset == 'annotations' else 'a COCO-format JSON file'
        raise ConfigError(f'config.data.{split}_annotations: dataset={dataset!r} needs {what}')
    if dataset == 'yolo_txt' and not images:
        raise ConfigError(f"config.data.{split}_images: dataset='yolo_txt' needs an image folder or list file")
    return annotations_path, images


def _load_files(
    config: ml_collections.ConfigDict, split: str, process_index: int, process_count: int
) -> tuple[tf.data.Dataset, SplitInfo]:
    """annotations / coco_json / yolo_txt: validated records → annotation_records_dataset."""
    dataset = str(config.data.dataset)
    annotations_path, images = _file_source_paths(config, split)
    if dataset == 'annotations':
        class_names = get_class_names(config)
        records = annotations_lib.read_annotations(annotations_path, class_names)
    elif dataset == 'coco_json':
        records, class_names = coco_json.read_coco_json(annotations_path, images or None)
        if split != 'train' and config.data.train_annotations and class_names != get_class_names(config):
            raise ConfigError(f'config.data.{split}_annotations: {annotations_path} has other categories than '
                             f'config.data.train_annotations {config.data.train_annotations}')
    else:
        class_names = get_class_names(config)
        records = yolo_txt.read_yolo_txt(images, class_names)
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
    flat_difficult = np.concatenate([r.difficult_flags() for r in records] + [np.zeros((0,), bool)]).astype(bool)
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
    difficult_t = tf.constant(flat_difficult, tf.bool)

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
            'difficult': difficult_t[row['start'] : row['end']],
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
