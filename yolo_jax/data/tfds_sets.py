"""Prepared TFDS detection sets (`voc/<config>`, `coco/<config>`) as data sources, and the TFDS reading that the
generated MNIST set (mnist_detection.py) shares.

Nothing is downloaded here: a set that is not prepared fails at once with the `tfds build` command to run. Split
mapping: voc train -> 'train+validation', test -> 'test'; coco train -> 'train', test -> 'validation'; any other
split name goes to TFDS as it is (e.g. 'validation', 'test[:100]'). VOC 'difficult' and COCO crowd boxes are kept
and flagged in 'difficult'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from yolo_jax.data.source_base import DataSource, SplitInfo
from yolo_jax.errors import MissingFileError

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


@dataclasses.dataclass(frozen=True)
class TfdsRules:
    """How a TFDS detection set maps onto this project's elements."""

    splits: dict[str, str]  # our split name -> TFDS split ('train' -> 'train+validation'); others pass through
    image_id: str  # the feature used as 'image_id'
    flag: str | None  # boolean objects/<flag> feature: boxes flagged 'difficult' (VOC difficult, COCO crowd)


def data_dir(config: ml_collections.ConfigDict) -> str | None:
    """config.data.data_dir, or None for TFDS's default."""
    return str(config.data.data_dir) or None


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
    """A voc/coco-style TFDS example -> a source element (see `sources`).

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


def load_tfds(
    builder: tfds.core.DatasetBuilder,
    name: str,
    rules: TfdsRules,
    split: str,
    process_index: int,
    process_count: int,
    *,
    build: str,
    round_boxes: bool = False,
) -> tuple[tf.data.Dataset, SplitInfo]:
    """This process's shard of `split` of the TFDS detection set `name` (its `builder`), as source elements.

    build: the set names for the `tfds build` command in the not-prepared message.
    """
    tfds_split = rules.splits.get(split, split)
    shard = tfds.even_splits(tfds_split, n=process_count)[process_index]
    try:
        # shuffle_files=False: files are interleaved in a fixed order (mnist_detection: strictly in example order).
        ds = builder.as_dataset(split=shard, shuffle_files=False)
    except (AssertionError, KeyError) as e:  # TFDS's "could not find data" / "splits is empty" errors
        if builder.is_prepared():
            raise
        raise MissingFileError(
            f'{name} is not prepared in {builder.data_dir_root}. This project never downloads it implicitly: '
            f'on a machine with network run `tfds build {build} --data_dir=<dir>` (COCO is ~20 GB; the archives '
            f'are downloaded into <dir>/downloads and can be deleted after the build), then set '
            f'config.data.data_dir=<dir> (or copy <dir>/{name.split("/")[0]} into {builder.data_dir_root}). ({e})'
        ) from e
    try:
        num_examples = int(builder.info.splits[tfds_split].num_examples)
    except (KeyError, ValueError):  # split sizes unknown (e.g. under tfds.testing.mock_data)
        num_examples = int(builder.as_dataset(split=tfds_split, shuffle_files=False).cardinality())
    ds = ds.map(_converter(rules, round_boxes=round_boxes), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    class_names = tuple(builder.info.features['objects']['label'].names)
    logging.info('Loaded %s %s (%s): %d examples, shard %d/%d', name, split, tfds_split, num_examples,
                 process_index, process_count)
    return ds, SplitInfo(num_examples=num_examples, class_names=class_names)


def _converter(rules: TfdsRules, *, round_boxes: bool) -> Callable[[dict], dict]:
    def convert(example: dict) -> dict:
        return tfds_detection_to_element(
            example, image_id_key=rules.image_id, flag_key=rules.flag, round_boxes=round_boxes
        )

    return tf.autograph.experimental.do_not_convert(convert)  # see input_pipeline._no_autograph


@dataclasses.dataclass(frozen=True)
class TfdsSet(DataSource):
    """A prepared TFDS detection set; `tfds_name` is the registry name ('voc') or a variant of it ('voc/2007')."""

    tfds_name: str
    rules: TfdsRules
    default_names: tuple[str, ...] | None = None  # used when an unprepared builder only knows the class count

    versioned = True
    combinable = True

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.tfds_name

    def variant(self, name: str) -> TfdsSet:
        return dataclasses.replace(self, tfds_name=name)

    def class_names(self, config: ml_collections.ConfigDict) -> tuple[tuple[str, ...], str]:
        """From the builder's code: no data needed."""
        names = tuple(tfds.builder(self.tfds_name, data_dir=data_dir(config)).info.features['objects']['label'].names)
        if self.default_names and names == tuple(str(i) for i in range(len(self.default_names))):
            names = self.default_names  # an unprepared builder knows only the count: the names in the same order
        return names, f'the TFDS data set {self.tfds_name}'

    def load_split(
        self, config: ml_collections.ConfigDict, split: str, process_index: int, process_count: int
    ) -> tuple[tf.data.Dataset, SplitInfo]:
        builder = tfds.builder(self.tfds_name, data_dir=data_dir(config))
        # Every set of a '+' combination goes into the build command: they are prepared together.
        return load_tfds(builder, self.tfds_name, self.rules, split, process_index, process_count,
                         build=' '.join(str(config.data.dataset).split('+')))


VOC = TfdsSet('voc', TfdsRules({'train': 'train+validation', 'test': 'test'}, 'image/filename', 'is_difficult'))
COCO = TfdsSet('coco', TfdsRules({'train': 'train', 'test': 'validation'}, 'image/id', 'is_crowd'),
               default_names=COCO_CLASS_NAMES)
