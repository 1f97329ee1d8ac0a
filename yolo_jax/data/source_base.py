"""The interface every data format implements (`DataSource`), and the base of file formats (`FileSource`).

A data source is one object, defined in its format's own module (annotations.py, coco_json.py, yolo_txt.py,
mnist_detection.py, tfds_sets.py) and registered by name in `sources.REGISTRY`. `sources` (the façade the rest of
the code calls) looks it up from config.data.dataset and calls its three methods:

    class_names(config) -> (names, where)   the class names, and where they come from (for error messages); cheap:
                                            no examples are built or read.
    prepare(config) -> None                 makes the set ready to read (builds the generated MNIST set); most
                                            sources need nothing.
    load_split(config, split, process_index, process_count) -> (tf.data.Dataset, SplitInfo)
                                            this process's contiguous shard of `split`, unbatched, deterministic.

A file format (a list of labelled image files) subclasses `FileSource` and implements only `class_names` and
`records(config, split) -> (list[AnnotationRecord], class names)` (validated, in a fixed order); `FileSource` checks
the split name and its config field, rejects an empty split, shards the records and reads the images
(`annotation_records_dataset`).

TensorFlow is imported only inside the functions that build datasets, so the format modules stay importable
without it (the converter reads files with them).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import ml_collections
import numpy as np

from yolo_jax.data import decode
from yolo_jax.errors import ConfigError, DataError

if TYPE_CHECKING:
    import tensorflow as tf

    from yolo_jax.data.annotations import AnnotationRecord

SPLITS = ('train', 'test')  # the names every source knows; TFDS sets take their own split names too


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    """What the pipeline needs to know about a split."""

    num_examples: int  # examples in the whole split (all processes)
    class_names: tuple[str, ...]


class DataSource:
    """One data format (see the module docstring). Subclasses set `name` (the registry name) and implement
    `class_names` and `load_split`; `prepare` does nothing unless overridden."""

    name: ClassVar[str] = ''
    versioned: ClassVar[bool] = False  # takes a TFDS config suffix: 'voc/2007' is the 'voc' source's variant
    combinable: ClassVar[bool] = False  # may be joined with '+' (its train splits concatenate)

    def variant(self, name: str) -> DataSource:
        """This source for the full name `name` (e.g. 'voc/2007'); only versioned sources have variants."""
        del name
        return self

    def class_names(self, config: ml_collections.ConfigDict) -> tuple[tuple[str, ...], str]:
        raise NotImplementedError

    def prepare(self, config: ml_collections.ConfigDict) -> None:
        del config

    def load_split(
        self, config: ml_collections.ConfigDict, split: str, process_index: int, process_count: int
    ) -> tuple[tf.data.Dataset, SplitInfo]:
        raise NotImplementedError


def check_split(name: str, split: str) -> None:
    """ValueError unless `split` is one of SPLITS (the splits file and generated sets know)."""
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS} for config.data.dataset={name!r}, got {split!r}')


def shard_bounds(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[start, end) of this process's contiguous shard; the first num_examples % process_count get one more."""
    if not 0 <= process_index < process_count:
        raise ValueError(f'process_index {process_index} not in [0, process_count={process_count})')
    base, extra = divmod(num_examples, process_count)
    start = process_index * base + min(process_index, extra)
    return start, start + base + (process_index < extra)


class FileSource(DataSource):
    """A format of image files plus labels. Subclasses implement `class_names` and `records`, and set `field`:
    'annotations' or 'images', the config.data.<split>_<field> each split needs (its annotation file, or its
    image folder / list), with `field_help` saying what it holds (for the error when it is empty)."""

    field: ClassVar[str] = 'annotations'
    field_help: ClassVar[str] = 'an annotation file'

    def records(
        self, config: ml_collections.ConfigDict, split: str
    ) -> tuple[list[AnnotationRecord], tuple[str, ...]]:
        """(the validated records of `split` ('train' or 'test') in a fixed order, the class names their ids index);
        a DataError naming the file and line of any problem."""
        raise NotImplementedError

    def split_field(self, split: str) -> str:
        """The config.data field that says where `split` is."""
        return f'{split}_{self.field}'

    def split_path(self, config: ml_collections.ConfigDict, split: str) -> str:
        """config.data.<split_field>; ConfigError naming the field when it is empty."""
        field = self.split_field(split)
        value = str(config.data[field])
        if not value:
            raise ConfigError(f'config.data.{field}: dataset={self.name!r} needs {self.field_help}')
        return value

    def load_split(
        self, config: ml_collections.ConfigDict, split: str, process_index: int, process_count: int
    ) -> tuple[tf.data.Dataset, SplitInfo]:
        check_split(self.name, split)
        path = self.split_path(config, split)
        records, class_names = self.records(config, split)
        if not records:
            raise DataError(f'config.data.{self.split_field(split)}={path}: the {split} split has no images')
        start, end = shard_bounds(len(records), process_index, process_count)
        return annotation_records_dataset(records[start:end]), SplitInfo(len(records), class_names)


def annotation_records_dataset(records: Sequence[AnnotationRecord]) -> tf.data.Dataset:
    """A dataset of elements (see `sources`) reading the records' images; image_id = the path.

    read_annotations has already decoded every image with the same decoder, so a decode error here means the file
    changed since: an image whose size differs from the checked one (record.num_bytes) fails with an error naming
    the file, and so does any PIL-decoded image. (A TF decode error of a file rewritten in place with the same
    size is the one failure that cannot name it: TF op errors carry no input values.)
    """
    import tensorflow as tf  # noqa: PLC0415  (only when building the dataset)


    counts = np.array([len(r.classes) for r in records], np.int64)
    ends = np.cumsum(counts)
    flat_boxes = np.concatenate([r.boxes for r in records] + [np.zeros((0, 4), np.int32)]).astype(np.float32)
    flat_classes = np.concatenate([r.classes for r in records] + [np.zeros((0,), np.int32)]).astype(np.int32)
    flat_difficult = np.concatenate([r.difficult_flags() for r in records] + [np.zeros((0,), bool)]).astype(bool)
    use_pil = [r.image_format not in decode.TF_IMAGE_FORMATS for r in records]
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
    # Traced as written (no AutoGraph conversion: input_pipeline._no_autograph says why).
    return ds.map(tf.autograph.experimental.do_not_convert(load), num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True)


def _pil_decode(path: bytes) -> np.ndarray:
    """decode.pil_decode inside tf.data: (H, W, 3) uint8 RGB; a failure names the file."""
    return decode.pil_decode(os.fsdecode(path))
