"""Where examples come from: the registry of data formats, and the functions the rest of the code calls.

config.data.dataset names a registered source (`REGISTRY`), each defined in its format's own module:
    'mnist_detection'  the generated MNIST detection set (mnist_detection.py), built by `prepare` into
                       config.data.data_dir ('' = TFDS default). Boxes are the generator's integer boxes.
    'annotations'      the reference's text format (annotations.py): config.data.train_annotations /
                       test_annotations and config.data.class_names. Lines without boxes are skipped, as upstream.
    'coco_json'        a COCO-format JSON + image folder (coco_json.py): config.data.train_annotations /
                       test_annotations are the JSON files, config.data.train_images / test_images the image folders
                       ('' = the JSON's folder). Class names from the JSON's categories (sorted by id).
    'yolo_txt'         YOLO-format labels (yolo_txt.py): config.data.train_images / test_images (an image folder or a
                       list file of image paths), one `cls cx cy w h` (normalised) label file per image, and
                       config.data.class_names.
    'auto', 'voc_xml', 'yolo_yaml'
                       a user's own folder in config.data.root (own_data.py): its layout (Pascal VOC XML devkit or
                       flat folders, an Ultralytics data.yaml, a YOLO txt folder, a COCO JSON file) is detected
                       and logged; a set without a test split is split by file-name hash (config.data.split_file).
    'voc/<config>', 'coco/<config>' (e.g. 'voc/2007', 'coco/2017'; 'voc/2007+voc/2012' trains on both)
                       prepared TFDS detection sets (tfds_sets.py; never downloaded here). With '+', the train split
                       concatenates every set's train split, other splits come from the first set.
An unknown name is a ConfigError listing these, raised before anything is read; so is an empty split (a DataError
naming the split and its file).

Every element: {'image': uint8 (H, W, 3) RGB, 'boxes': float32 (N, 4) x1, y1, x2, y2 in pixels of that image,
'classes': int32 (N,), 'difficult': bool (N,) (VOC difficult / COCO iscrowd: ignored by evaluation, dropped by
training), 'image_id': int64 (mnist_detection, coco) or string (voc: file name; files: the image path)}.
Order is deterministic. Each process reads a contiguous shard: the first (num_examples % process_count) shards
hold one example more (as `tfds.even_splits`).

Adding a file format (images + labels on disk), in its own module `yolo_jax/data/<format>.py`:
    class MyFormatSource(source_base.FileSource):
        name = 'my_format'
        field, field_help = 'annotations', 'a my-format file'  # config.data.<split>_<field> each split needs
        def class_names(self, config): return names, 'where they come from'
        def records(self, config, split): return [AnnotationRecord, ...], class_names  # validated, fixed order
    SOURCE = MyFormatSource()
then register it with one line in `REGISTRY` below ('my_format': my_format.SOURCE) and document it above and in
README's Data section. FileSource does the rest (split names, empty splits, sharding, image decoding). Another
kind of source (e.g. a TFDS set) implements `source_base.DataSource` (class_names, prepare, load_split) itself.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import tensorflow as tf

from yolo_jax.data import annotations, coco_json, mnist_detection, own_data, tfds_sets, yolo_txt
from yolo_jax.data.source_base import (  # noqa: F401  (re-exported: the module functions callers use)
    SPLITS,
    DataSource,
    SplitInfo,
    annotation_records_dataset,
    shard_bounds,
)
from yolo_jax.data.tfds_sets import (  # noqa: F401  (re-exported)
    COCO_CLASS_NAMES,
    normalized_to_pixel_xyxy,
    tfds_detection_to_element,
)
from yolo_jax.errors import ConfigError, DataError

# config.data.dataset -> its source. A versioned source also answers '<name>/<config>' (a TFDS config).
REGISTRY: dict[str, DataSource] = {
    'mnist_detection': mnist_detection.SOURCE,
    'annotations': annotations.SOURCE,
    'coco_json': coco_json.SOURCE,
    'yolo_txt': yolo_txt.SOURCE,
    'voc': tfds_sets.VOC,
    'coco': tfds_sets.COCO,
    **{source.name: source for source in own_data.SOURCES},  # 'auto', 'voc_xml', 'yolo_yaml': config.data.root
}


@dataclasses.dataclass(frozen=True)
class Combined(DataSource):
    """Sets joined with '+': the same classes; the train split concatenates every set's, others are the first's."""

    full_name: str
    parts: tuple[DataSource, ...]

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.full_name

    def class_names(self, config: ml_collections.ConfigDict) -> tuple[tuple[str, ...], str]:
        names = {part.class_names(config)[0] for part in self.parts}
        if len(names) > 1:
            raise ConfigError(f'config.data.dataset={self.full_name!r}: the sets have different classes')
        return names.pop(), f'the TFDS data set {self.full_name}'

    def prepare(self, config: ml_collections.ConfigDict) -> None:
        for part in self.parts:
            part.prepare(config)

    def load_split(
        self, config: ml_collections.ConfigDict, split: str, process_index: int, process_count: int
    ) -> tuple[tf.data.Dataset, SplitInfo]:
        parts = self.parts if split == 'train' else self.parts[:1]
        loaded = [part.load_split(config, split, process_index, process_count) for part in parts]
        ds, info = loaded[0]
        for other, other_info in loaded[1:]:
            if other_info.class_names != info.class_names:
                raise ConfigError(f'config.data.dataset={self.full_name!r}: the sets have different classes')
            ds = ds.concatenate(other)
            info = SplitInfo(info.num_examples + other_info.num_examples, info.class_names)
        return ds, info


def registered_names() -> list[str]:
    """The accepted forms of config.data.dataset, as the unknown-name error lists them."""
    return [f'{name}/<config>' if source.versioned else name for name, source in REGISTRY.items()]


def get_source(name: str) -> DataSource:
    """The source of config.data.dataset = `name`: a registered name, '<versioned name>/<config>' (e.g.
    'voc/2007'), or such names joined with '+'. ConfigError listing the registered formats for anything else."""
    parts = [_lookup(part, name) for part in name.split('+')]
    if len(parts) == 1:
        return parts[0]
    single = [p.name for p in parts if not p.combinable]
    if single:
        raise ConfigError(f"config.data.dataset={name!r}: only TFDS sets combine with '+', not {', '.join(single)}")
    return Combined(name, tuple(parts))


def _lookup(part: str, name: str) -> DataSource:
    family, slash, config_name = part.partition('/')
    source = REGISTRY.get(family)
    if source is None or (slash and not (source.versioned and config_name)):
        raise ConfigError(f'config.data.dataset={name!r}: unknown data set; expected one of '
                          f"{', '.join(registered_names())} (TFDS sets combine with '+', e.g. 'voc/2007+voc/2012')")
    return source.variant(part) if slash else source


def _source(config: ml_collections.ConfigDict) -> DataSource:
    return get_source(str(config.data.dataset))


def get_class_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """Class names of config.data.dataset, without building or reading any examples (coco_json: reads the JSON's
    categories)."""
    return _source(config).class_names(config)[0]


def class_source(config: ml_collections.ConfigDict) -> tuple[tuple[str, ...], str]:
    """(class names of config.data.dataset, a description of where they come from), without building or reading
    any examples: cheap enough to check a config against in the first seconds of a run."""
    return _source(config).class_names(config)


def prepare(config: ml_collections.ConfigDict) -> None:
    """Makes config.data.dataset ready to read. Building the generated MNIST set is this explicit step (logged; once
    per data dir), never a side effect of loading; the other data sets need no preparation here."""
    _source(config).prepare(config)


def load_split(
    config: ml_collections.ConfigDict, split: str, *, process_index: int = 0, process_count: int = 1
) -> tuple[tf.data.Dataset, SplitInfo]:
    """split: 'train' or 'test' (any source), or another split name of a TFDS set. Unbatched, deterministic
    order, this process's shard only; a split without examples is a DataError.

    Elements: {'image': uint8 (H, W, 3) RGB, 'boxes': float32 (N, 4) x1,y1,x2,y2 in pixels of that image,
    'classes': int32 (N,), 'difficult': bool (N,), 'image_id': int64 or string scalar}.
    """
    source = _source(config)
    if not isinstance(split, str) or not split:
        raise ValueError(f'split must be a split name such as {SPLITS}, got {split!r}')
    if not 0 <= process_index < process_count:
        raise ValueError(f'process_index {process_index} not in [0, process_count={process_count})')
    ds, info = source.load_split(config, split, process_index, process_count)
    if info.num_examples == 0:
        raise DataError(f'config.data.dataset={source.name!r}: the {split} split has no examples')
    return ds, info
