"""TFDS builder `mnist_detection`: the reference's synthetic MNIST detection set, built once into a data dir.

Each setting (num_train, num_test, image_size, seed, resolved digit source, paste mode) is its own BuilderConfig
whose name encodes all of them, e.g. `mnist_detection/n1000-200_size416_seed0_sklearn/1.0.0`, so different settings
never collide in one data dir. A path digit source is named by a hash of its absolute path (not of its content:
after changing the files in place, delete the built folder).
TFDS writes into a temporary `incomplete.*` folder and renames it when the build succeeded: an interrupted build
leaves no readable dataset and the next call builds again.

Features, as TFDS's voc/coco: `image` (S, S, 3) uint8 PNG (grey stored as RGB), `image/filename`, `image/id` (int64,
the index in the split), `objects` = Sequence({'bbox': BBoxFeature (normalized ymin, xmin, ymax, xmax),
'label': ClassLabel('0'..'9')}). Pixel boxes are recovered exactly by bbox * S rounded (`SOURCE.load_split` does so).

Examples are stored in generation order (example i = generator image i), so TFDS refuses `shuffle_files=True` on
this dataset; shuffle downstream. Reading back without this code:
`tfds.builder('mnist_detection/<config name>', data_dir=...)`.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from yolo_jax.data import digits as digits_lib
from yolo_jax.data import mnist_generator
from yolo_jax.data.source_base import DataSource, SplitInfo, check_split
from yolo_jax.data.tfds_sets import TfdsRules, load_tfds

CLASS_NAMES = tuple(str(d) for d in range(10))


@dataclasses.dataclass(kw_only=True)
class MnistDetectionConfig(tfds.core.BuilderConfig):
    """One generated set. `digit_source` is resolved: 'tfds', 'sklearn' or an absolute path."""

    num_train: int = 1000
    num_test: int = 200
    image_size: int = 416
    seed: int = 0
    digit_source: str = 'sklearn'
    paste: str = 'overwrite'


def config_name(
    num_train: int, num_test: int, image_size: int, seed: int, digit_source: str, paste: str = 'overwrite'
) -> str:
    """The BuilderConfig name for these settings (`digit_source` resolved), e.g. 'n8-4_size416_seed0_sklearn';
    a non-default paste mode is appended ('..._darken')."""
    tag = digits_lib.source_tag(digit_source)
    suffix = '' if paste == 'overwrite' else f'_{paste}'
    return f'n{num_train}-{num_test}_size{image_size}_seed{seed}_{tag}{suffix}'


def _make_config(
    num_train: int, num_test: int, image_size: int, seed: int, digit_source: str, paste: str = 'overwrite'
) -> MnistDetectionConfig:
    return MnistDetectionConfig(
        name=config_name(num_train, num_test, image_size, seed, digit_source, paste),
        description=(
            f'{num_train} train / {num_test} test images of {image_size}x{image_size}, generator seed {seed}, '
            f'digits from {digit_source}, paste={paste}'
        ),
        num_train=num_train,
        num_test=num_test,
        image_size=image_size,
        seed=seed,
        digit_source=digit_source,
        paste=paste,
    )


# The reference's settings with the always-available digits; any other setting is a custom config.
_DEFAULT_CONFIG = _make_config(1000, 200, 416, 0, 'sklearn')


class MnistDetection(tfds.core.GeneratorBasedBuilder):
    """Synthetic MNIST detection (digits pasted on a white canvas), as the TF2 reference's make_data.py."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release.'}
    BUILDER_CONFIGS = [_DEFAULT_CONFIG]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.10's own lookup touches `importlib_resources`, which it does not declare as a dependency
        # (ModuleNotFoundError on download_and_prepare). This file is the answer it would compute; TFDS only uses
        # it to look for a checksums file beside it (there is none: nothing is downloaded).
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split('\n', 1)[0],
            features=tfds.features.FeaturesDict(
                {
                    'image': tfds.features.Image(shape=(size, size, 3), encoding_format='png'),
                    'image/filename': tfds.features.Text(),
                    'image/id': np.int64,
                    'objects': tfds.features.Sequence(
                        {
                            'bbox': tfds.features.BBoxFeature(),
                            'label': tfds.features.ClassLabel(names=list(CLASS_NAMES)),
                        }
                    ),
                }
            ),
            supervised_keys=None,
            # Store examples in generation order, so example i of a split is image i of the generator.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download: digits come from `digit_source`
        return {'train': self._generate_examples('train'), 'test': self._generate_examples('test')}

    def _generate_examples(self, split: str):
        cfg = self.builder_config
        num = cfg.num_train if split == 'train' else cfg.num_test
        pool = digits_lib.load_digits(cfg.digit_source, split, data_dir=str(self.data_dir_root))
        size = cfg.image_size
        examples = mnist_generator.generate_split(
            pool, num, split=split, seed=cfg.seed, image_size=size, paste=cfg.paste
        )
        for i, ex in examples:
            # BBoxFeature stores normalized ymin, xmin, ymax, xmax as float32; * size and rounding recovers pixels.
            norm = ex.boxes.astype(np.float64) / size
            bboxes = [tfds.features.BBox(ymin=b[1], xmin=b[0], ymax=b[3], xmax=b[2]) for b in norm]
            example = {
                'image': ex.image,
                'image/filename': f'{split}_{i:06d}.png',
                'image/id': i,
                'objects': {'bbox': bboxes, 'label': ex.labels.astype(np.int64)},
            }
            yield i, example


def mnist_detection_config(
    num_train: int = 1000,
    num_test: int = 200,
    image_size: int = 416,
    seed: int = 0,
    digit_source: str = 'auto',
    data_dir: str | None = None,
    paste: str = 'overwrite',
) -> MnistDetectionConfig:
    """The BuilderConfig for these settings; resolves `digit_source` ('auto' may probe the network for 2 s)."""
    mnist_generator.check_image_size(image_size)
    if paste not in mnist_generator.PASTE_MODES:
        raise ValueError(f'mnist_detection: paste must be one of {mnist_generator.PASTE_MODES}, got {paste!r}')
    if num_train < 1 or num_test < 1:
        raise ValueError(f'mnist_detection needs num_train, num_test >= 1, got {num_train}, {num_test}')
    resolved = digits_lib.resolve_digit_source(digit_source, data_dir)
    cfg = _make_config(num_train, num_test, image_size, seed, resolved, paste)
    # TFDS refuses a custom config named like a registered one: hand back the registered object.
    return _DEFAULT_CONFIG if cfg.name == _DEFAULT_CONFIG.name else cfg


def build_mnist_detection(
    num_train: int = 1000,
    num_test: int = 200,
    image_size: int = 416,
    seed: int = 0,
    digit_source: str = 'auto',
    data_dir: str | None = None,
    paste: str = 'overwrite',
) -> MnistDetection:
    """Builds the set into `data_dir` (None = TFDS default) unless already there; returns the prepared builder."""
    cfg = mnist_detection_config(num_train, num_test, image_size, seed, digit_source, data_dir, paste)
    builder = MnistDetection(config=cfg, data_dir=data_dir or None)
    if builder.is_prepared():
        logging.info('Reusing mnist_detection/%s in %s', cfg.name, builder.data_dir)
        return builder
    logging.info('Building mnist_detection/%s (%s) into %s', cfg.name, cfg.description, builder.data_dir)
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    except OSError:
        # Another process may have finished the same deterministic build first (its rename won the race).
        if not MnistDetection(config=cfg, data_dir=data_dir or None).is_prepared():
            raise
        logging.info('mnist_detection/%s was built concurrently by another process; reusing it', cfg.name)
        builder = MnistDetection(config=cfg, data_dir=data_dir or None)
    logging.info(
        'Built mnist_detection/%s: %d train, %d test images',
        cfg.name,
        builder.info.splits['train'].num_examples,
        builder.info.splits['test'].num_examples,
    )
    return builder


def prepare_mnist_detection(config: ml_collections.ConfigDict) -> MnistDetection:
    """Builds (if needed) and returns the builder for config.data's num_train, num_test, image_size,
    generator_seed, digit_source, data_dir and generator_paste ('overwrite' is the reference's pasting)."""
    d = config.data
    return build_mnist_detection(
        num_train=int(d.num_train),
        num_test=int(d.num_test),
        image_size=int(d.image_size),
        seed=int(d.generator_seed),
        digit_source=str(d.digit_source),
        data_dir=str(d.data_dir) or None,
        paste=str(d.generator_paste),
    )


class MnistDetectionSource(DataSource):
    """config.data.dataset='mnist_detection': the generated set, built by `prepare` (an explicit, logged step at
    the start of a run; once per data dir and setting) into config.data.data_dir ('' = TFDS default). Boxes are the
    generator's integer boxes; 'image_id' is the index in the split."""

    name = 'mnist_detection'
    _rules = TfdsRules({'train': 'train', 'test': 'test'}, 'image/id', None)

    def class_names(self, config: ml_collections.ConfigDict) -> tuple[tuple[str, ...], str]:
        return CLASS_NAMES, 'the MNIST detection set'

    def prepare(self, config: ml_collections.ConfigDict) -> None:
        logging.info('Preparing the MNIST detection set (built once into %s, then reused)',
                     config.data.data_dir or 'the TFDS data dir')
        prepare_mnist_detection(config)

    def load_split(self, config: ml_collections.ConfigDict, split: str, process_index: int, process_count: int
                   ) -> tuple[tf.data.Dataset, SplitInfo]:
        check_split(self.name, split)
        builder = prepare_mnist_detection(config)  # reuses the prepared set (builds it when called alone)
        return load_tfds(builder, self.name, self._rules, split, process_index, process_count, build=self.name,
                         round_boxes=True)


SOURCE = MnistDetectionSource()
