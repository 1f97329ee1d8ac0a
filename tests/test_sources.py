"""load_split for every source kind: the mnist_detection TFDS builder (built once into a tmp data dir, read back
exactly), annotation files, and voc/coco through tfds.testing.mock_data — all offline."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from configs.mnist import get_config
from yolo_jax import errors
from yolo_jax.data import annotations as ann
from yolo_jax.data import coco_json, digits, mnist_detection, mnist_generator, own_data, sources, tfds_sets, yolo_txt
from yolo_jax.data.source_base import DataSource, FileSource

REPO = Path(__file__).resolve().parents[1]
NUM_TRAIN, NUM_TEST, SIZE = 8, 4, 416


def _mnist_config(data_dir: Path, **overrides):
    config = get_config()
    config.data.dataset = 'mnist_detection'
    config.data.data_dir = str(data_dir)
    config.data.digit_source = 'sklearn'  # explicit: 'auto' would probe the network
    config.data.num_train, config.data.num_test, config.data.image_size = NUM_TRAIN, NUM_TEST, SIZE
    for key, value in overrides.items():
        config.data[key] = value
    return config


def _expected(split: str, num: int, seed: int = 0, size: int = SIZE):
    """The generator's own output: what the stored dataset must reproduce exactly."""
    pool = digits.load_digits('sklearn', split)
    return [ex for _, ex in mnist_generator.generate_split(pool, num, split=split, seed=seed, image_size=size)]


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp('tfds')
    config = _mnist_config(data_dir)
    builder = mnist_detection.prepare_mnist_detection(config)
    return config, builder


def test_builds_once_into_a_named_config_and_reads_back_with_plain_tfds(built, monkeypatch):
    config, builder = built
    name = 'n8-4_size416_seed0_sklearn'
    assert builder.builder_config.name == name
    version_dir = Path(config.data.data_dir) / 'mnist_detection' / name / '1.0.0'
    assert Path(builder.data_dir) == version_dir and (version_dir / 'dataset_info.json').is_file()

    # Read back without our builder config object: TFDS restores the dataset from its files.
    reader = tfds.builder(f'mnist_detection/{name}', data_dir=config.data.data_dir)
    assert reader.info.splits['train'].num_examples == NUM_TRAIN
    assert reader.info.features['objects']['label'].names == [str(d) for d in range(10)]
    stored = list(tfds.as_numpy(reader.as_dataset(split='train')))
    for i, (got, want) in enumerate(zip(stored, _expected('train', NUM_TRAIN), strict=True)):
        assert got['image/id'] == i and got['image/filename'] == f'train_{i:06d}.png'.encode()
        np.testing.assert_array_equal(got['image'], want.image)
        ymin, xmin, ymax, xmax = got['objects']['bbox'].T
        pixels = np.rint(np.stack([xmin, ymin, xmax, ymax], 1) * SIZE)
        np.testing.assert_array_equal(pixels, want.boxes)
        np.testing.assert_array_equal(got['objects']['label'], want.labels)

    # A second prepare reuses the data: generating anything now would fail.
    stamp = (version_dir / 'dataset_info.json').stat().st_mtime_ns

    def no_rebuild(self, split):
        raise AssertionError('rebuilt')

    monkeypatch.setattr(mnist_detection.MnistDetection, '_generate_examples', no_rebuild)
    again = mnist_detection.prepare_mnist_detection(config)
    assert again.info.splits['test'].num_examples == NUM_TEST
    assert (version_dir / 'dataset_info.json').stat().st_mtime_ns == stamp


def test_load_split_gives_the_generator_boxes_and_shards(built):
    config, _ = built
    ds, info = sources.load_split(config, 'train')
    assert info == sources.SplitInfo(num_examples=NUM_TRAIN, class_names=tuple(str(d) for d in range(10)))
    spec = ds.element_spec
    assert spec['image'].dtype == tf.uint8 and spec['image'].shape.as_list() == [SIZE, SIZE, 3]
    assert spec['boxes'].dtype == tf.float32 and spec['boxes'].shape.as_list() == [None, 4]
    assert spec['classes'].dtype == tf.int32 and spec['image_id'].dtype == tf.int64
    elements = list(tfds.as_numpy(ds))
    for got, want in zip(elements, _expected('train', NUM_TRAIN), strict=True):
        np.testing.assert_array_equal(got['boxes'], want.boxes.astype(np.float32))  # exact integers
        np.testing.assert_array_equal(got['classes'], want.labels)
        np.testing.assert_array_equal(got['image'], want.image)
    shards = [sources.load_split(config, 'train', process_index=i, process_count=3) for i in range(3)]
    ids = [[int(e['image_id']) for e in tfds.as_numpy(ds_i)] for ds_i, _ in shards]
    assert ids == [[0, 1, 2], [3, 4, 5], [6, 7]] and all(inf.num_examples == NUM_TRAIN for _, inf in shards)
    test_ds, test_info = sources.load_split(config, 'test')
    assert test_info.num_examples == NUM_TEST == len(list(test_ds))
    assert sources.get_class_names(config) == info.class_names == tuple('0123456789')
    with pytest.raises(ValueError, match='process_index'):
        sources.load_split(config, 'train', process_index=3, process_count=3)


def test_other_settings_do_not_collide(built):
    config, builder = built
    other = mnist_detection.prepare_mnist_detection(_mnist_config(Path(config.data.data_dir), generator_seed=1))
    assert other.data_dir != builder.data_dir and 'seed1' in str(other.data_dir)
    first = next(iter(tfds.as_numpy(other.as_dataset(split='test'))))
    np.testing.assert_array_equal(first['image'], _expected('test', 1, seed=1)[0].image)
    assert builder.is_prepared()
    assert not np.array_equal(first['image'], _expected('test', 1, seed=0)[0].image)


def test_interrupted_build_leaves_no_usable_dataset(tmp_path, monkeypatch):
    config = _mnist_config(tmp_path, num_train=3, num_test=2)
    real = mnist_generator.generate_split

    def dies_after_two(*args, **kwargs):
        for k, item in enumerate(real(*args, **kwargs)):
            if k == 2:
                raise KeyboardInterrupt('killed mid-build')
            yield item

    monkeypatch.setattr(mnist_generator, 'generate_split', dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        mnist_detection.prepare_mnist_detection(config)
    config_dir = tmp_path / 'mnist_detection' / 'n3-2_size416_seed0_sklearn'
    assert not (config_dir / '1.0.0').exists()
    assert not list(config_dir.glob('*incomplete*'))  # the temporary folder was removed
    # A hard kill would leave an incomplete folder behind: it must not count as prepared.
    (config_dir / 'incomplete.ABC123_1.0.0').mkdir(parents=True)
    probe = mnist_detection.MnistDetection(
        config=mnist_detection.mnist_detection_config(3, 2, SIZE, 0, 'sklearn'), data_dir=str(tmp_path)
    )
    assert not probe.is_prepared()
    monkeypatch.setattr(mnist_generator, 'generate_split', real)
    ds, info = sources.load_split(config, 'train')
    assert info.num_examples == 3 and len(list(ds)) == 3


def test_exported_split_reads_back_exactly(built, tmp_path):
    """The generated set written as the reference's text format (annotations.export_dataset) reads back as the
    generator made it."""
    config, _ = built
    ds, info = sources.load_split(config, 'test')
    txt = ann.export_dataset(tfds.as_numpy(ds), tmp_path / 'mnist_test', info.class_names)
    records = ann.read_annotations(txt, ann.read_class_names(tmp_path / 'mnist_test' / 'classes.txt'))
    for rec, want in zip(records, _expected('test', NUM_TEST), strict=True):
        np.testing.assert_array_equal(rec.boxes, want.boxes)
        np.testing.assert_array_equal(rec.classes, want.labels)
        np.testing.assert_array_equal(np.asarray(Image.open(rec.path)), want.image)


def test_annotation_files_source(tmp_path):
    rng = np.random.default_rng(0)
    images = {
        'a.png': rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8),
        'b.pgm': np.repeat(rng.integers(0, 256, size=(20, 25, 1), dtype=np.uint8), 3, axis=2),  # decoded by PIL
        'c.png': rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8),
    }
    for name, img in images.items():
        Image.fromarray(img[..., 0] if name.endswith('.pgm') else img).save(tmp_path / name)
    (tmp_path / 'names.txt').write_text('x\ny\n')
    (tmp_path / 'train.txt').write_text('a.png 1,2,10,12,0 3,3,8,9,1\nb.pgm 0,0,25,20,1\nc.png 4,4,6,6,0\n')
    (tmp_path / 'test.txt').write_text('c.png 1,1,2,2,1\n')
    config = get_config()
    config.data.dataset = 'annotations'
    config.data.train_annotations = str(tmp_path / 'train.txt')
    config.data.test_annotations = str(tmp_path / 'test.txt')
    config.data.class_names = str(tmp_path / 'names.txt')
    ds, info = sources.load_split(config, 'train')
    assert info == sources.SplitInfo(3, ('x', 'y')) and sources.get_class_names(config) == ('x', 'y')
    got = list(tfds.as_numpy(ds))
    want_boxes = [[[1, 2, 10, 12], [3, 3, 8, 9]], [[0, 0, 25, 20]], [[4, 4, 6, 6]]]
    want_classes = [[0, 1], [1], [0]]
    for g, name, boxes, classes in zip(got, images, want_boxes, want_classes, strict=True):
        np.testing.assert_array_equal(g['image'], images[name])
        assert g['boxes'].dtype == np.float32 and g['classes'].dtype == np.int32
        np.testing.assert_array_equal(g['boxes'], boxes)
        np.testing.assert_array_equal(g['classes'], classes)
        assert g['image_id'].decode() == str(tmp_path / name)
    shard = list(tfds.as_numpy(sources.load_split(config, 'train', process_index=1, process_count=2)[0]))
    assert [s['image_id'].decode() for s in shard] == [str(tmp_path / 'c.png')]
    test_ds, test_info = sources.load_split(config, 'test')
    assert test_info.num_examples == 1 and len(list(test_ds)) == 1


def test_tfds_conversion_on_a_hand_made_example():
    example = {
        'image': tf.zeros((100, 200, 3), tf.uint8),
        'image/id': tf.constant(7, tf.int64),
        'objects': {
            'bbox': tf.constant([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.25, 0.5, 0.75, 1.0]], tf.float32),
            'label': tf.constant([3, 4, 5], tf.int64),
            'is_crowd': tf.constant([False, True, False]),
        },
    }
    out = sources.tfds_detection_to_element(example, image_id_key='image/id', drop_key='is_crowd')
    np.testing.assert_allclose(out['boxes'].numpy(), [[40, 10, 120, 50], [100, 25, 200, 75]], rtol=1e-6)
    np.testing.assert_array_equal(out['classes'].numpy(), [3, 5])
    assert out['classes'].dtype == tf.int32 and int(out['image_id']) == 7
    assert sources.shard_bounds(10, 0, 3) == (0, 4) and sources.shard_bounds(10, 2, 3) == (7, 10)


@pytest.mark.parametrize(
    'dataset, split, tfds_split, id_dtype, drop',
    [
        ('voc/2007', 'train', 'train+validation', tf.string, 'is_difficult'),
        ('coco/2017', 'test', 'validation', tf.int64, 'is_crowd'),
    ],
)
def test_voc_and_coco_through_mock_data(dataset, split, tfds_split, id_dtype, drop, monkeypatch):
    config = get_config()
    config.data.dataset = dataset
    requested = []

    def consistent(example):
        # mock_data draws each objects/* field with its own random length; real data has one length per image.
        n = tf.reduce_min([tf.shape(v)[0] for v in example['objects'].values()])
        return {**example, 'objects': {k: v[:n] for k, v in example['objects'].items()}}

    with tfds.testing.mock_data(num_examples=3):
        mocked = tfds.core.DatasetBuilder.as_dataset

        def spy(self, *args, **kwargs):
            requested.append(kwargs.get('split'))
            return mocked(self, *args, **kwargs).map(consistent)

        monkeypatch.setattr(tfds.core.DatasetBuilder, 'as_dataset', spy)
        ds, info = sources.load_split(config, split)
        got = list(tfds.as_numpy(ds))
        raw = list(tfds.as_numpy(mocked(tfds.builder(dataset), split=tfds_split).map(consistent)))
    assert requested[0].split == tfds_split  # the even-split shard of the mapped TFDS split
    assert any(len(r['objects']['label']) for r in raw)
    assert info.num_examples == 3 and len(info.class_names) == (20 if dataset.startswith('voc') else 80)
    assert ds.element_spec['image_id'].dtype == id_dtype
    for g, r in zip(got, raw, strict=True):
        h, w = r['image'].shape[:2]
        # VOC difficult / COCO crowd boxes are kept, flagged (evaluation ignores them, training drops them).
        ymin, xmin, ymax, xmax = r['objects']['bbox'].T
        np.testing.assert_allclose(g['boxes'], np.stack([xmin * w, ymin * h, xmax * w, ymax * h], 1), rtol=1e-6)
        np.testing.assert_array_equal(g['classes'], r['objects']['label'])
        np.testing.assert_array_equal(g['difficult'], r['objects'][drop])
        np.testing.assert_array_equal(g['image'], r['image'])


def test_unprepared_tfds_set_and_bad_names_are_clear(tmp_path):
    config = get_config()
    config.data.dataset = 'voc/2007'
    config.data.data_dir = str(tmp_path)
    assert len(sources.get_class_names(config)) == 20  # from the builder's code, no data needed
    with pytest.raises(FileNotFoundError, match='tfds build voc/2007'):
        sources.load_split(config, 'test')
    config.data.dataset = 'imagenet'
    with pytest.raises(ValueError, match='config.data.dataset'):
        sources.load_split(config, 'train')
    config.data.dataset = 'mnist_detection'  # file and generated sets know 'train' and 'test' only
    with pytest.raises(ValueError, match='split must be one of'):
        sources.load_split(config, 'validation')


# ----------------------------------------------------------------------------------------------------------------
# The registry.

EXPECTED_FORMATS = {  # name -> (the module that defines it, versioned)
    'mnist_detection': (mnist_detection, False), 'annotations': (ann, False), 'coco_json': (coco_json, False),
    'yolo_txt': (yolo_txt, False), 'voc': (tfds_sets, True), 'coco': (tfds_sets, True),
    'auto': (own_data, False), 'voc_xml': (own_data, False), 'yolo_yaml': (own_data, False),  # config.data.root
}


def test_every_registered_name_resolves_to_its_modules_source():
    assert set(sources.REGISTRY) == set(EXPECTED_FORMATS)
    for name, (module, versioned) in EXPECTED_FORMATS.items():
        source = sources.get_source(name)
        assert source is sources.REGISTRY[name] and source.name == name and source.versioned == versioned
        assert type(source).__module__ == module.__name__  # defined in its format's own file
        base = FileSource if isinstance(source, FileSource) else DataSource
        for method in ('class_names', 'records') if base is FileSource else ('class_names', 'load_split'):
            assert getattr(type(source), method) is not getattr(base, method), (name, method)  # implemented
        if versioned:
            variant = sources.get_source(f'{name}/2017')
            assert variant.name == f'{name}/2017' and variant.rules == source.rules
    # Class names of the TFDS variants come from the builders' code (no data): VOC's 20, Darknet's COCO order.
    config = get_config()
    assert len(sources.get_source('voc/2007').class_names(config)[0]) == 20
    assert sources.get_source('coco/2017').class_names(config) == (sources.COCO_CLASS_NAMES,
                                                                   'the TFDS data set coco/2017')
    both = sources.get_source('voc/2007+voc/2012')
    assert [p.name for p in both.parts] == ['voc/2007', 'voc/2012'] and both.name == 'voc/2007+voc/2012'
    assert both.class_names(config)[0] == sources.get_source('voc/2012').class_names(config)[0]


@pytest.mark.parametrize('name', ['foo', 'imagenet', 'voc/', 'annotations/2007', 'vocx/2007', 'voc/2007+foo', ''])
def test_unknown_name_is_one_config_error_listing_the_formats(name):
    with pytest.raises(errors.ConfigError) as e:
        sources.get_source(name)
    message = str(e.value)
    assert message.startswith(f'config.data.dataset={name!r}: unknown data set') and '\n' not in message
    for listed in ('mnist_detection', 'annotations', 'coco_json', 'yolo_txt', 'voc/<config>', 'coco/<config>'):
        assert listed in message
    with pytest.raises(errors.ConfigError, match="only TFDS sets combine with '\\+', not yolo_txt"):
        sources.get_source('voc/2007+yolo_txt')


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != errors.TRACEBACK_ENV}
    env.update(JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, '-m', 'yolo_jax.main', '--nojemalloc',
                           '--config=configs/mnist.py:tiny,smoke', *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)  # hang guard


def assert_one_error_before_any_step(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == errors.EXIT_CODE, proc.stderr[-3000:]
    error_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('error: ')]
    assert len(error_lines) == 1 and re.search(pattern, error_lines[0]), proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr and 'DatasetNotFoundError' not in proc.stderr, proc.stderr[-3000:]
    assert not re.search(r'epoch: *\d+ step:', proc.stderr), proc.stderr[-3000:]  # no training step ran


def test_cli_unknown_dataset_is_one_error_line_before_anything_is_read(tmp_path):
    data_dir = tmp_path / 'tfds'
    proc = run_cli(f'--workdir={tmp_path / "run"}', '--config.data.dataset=foo', f'--config.data.data_dir={data_dir}')
    names = ', '.join(sources.registered_names())
    assert_one_error_before_any_step(proc, f"^error: config\\.data\\.dataset='foo': unknown data set; expected one "
                                           f'of {re.escape(names)}')
    assert not data_dir.exists()  # nothing was built or read


def test_cli_empty_test_split_is_one_error_naming_split_and_file_at_start(tmp_path):
    """A COCO JSON test file without images: before, the run trained an epoch and died in validation."""
    from detection_fixtures import CLASS_NAMES, TRAIN, write_coco

    train_json, train_images = write_coco(tmp_path, TRAIN, 'train')
    test_json = tmp_path / 'empty_test.json'
    test_json.write_text(json.dumps({'images': [], 'annotations': [],
                                     'categories': json.loads(train_json.read_text())['categories']}))
    proc = run_cli(f'--workdir={tmp_path / "run"}', '--config.data.dataset=coco_json',
                   f'--config.model.num_classes={len(CLASS_NAMES)}', f'--config.data.train_annotations={train_json}',
                   f'--config.data.train_images={train_images}', f'--config.data.test_annotations={test_json}')
    assert_one_error_before_any_step(
        proc, f'^error: config\\.data\\.test_annotations={re.escape(str(test_json))}: the test split has no images$')
    # The same through the function, for a split of any source: a DataError naming the split.
    config = get_config()
    config.data.dataset = 'coco_json'
    config.data.train_annotations, config.data.test_annotations = str(train_json), str(test_json)
    config.data.train_images = str(train_images)
    assert sources.load_split(config, 'train')[1].num_examples == len(TRAIN)
    with pytest.raises(errors.DataError, match='the test split has no images'):
        sources.load_split(config, 'test')
