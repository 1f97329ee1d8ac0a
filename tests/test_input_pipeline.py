"""End-to-end input pipeline on a small in-memory source (sources.load_split monkeypatched)."""

from __future__ import annotations

import dataclasses
import importlib.util
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from helpers import spec_of

from yolo_jax import input_pipeline
from yolo_jax.data import letterbox, targets
from yolo_jax.defaults import model_config
from yolo_jax.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
NUM_TRAIN, NUM_TEST = 11, 7


@dataclasses.dataclass(frozen=True)
class FakeSplitInfo:
    num_examples: int
    class_names: tuple[str, ...]


def make_examples(n: int, seed: int) -> list[dict]:
    """Images of varied sizes with 0..6 filled boxes each (example 1 has none)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = [(60, 80), (96, 96), (50, 120), (130, 70)][i % 4]
        image = rng.integers(150, 256, (h, w, 3), dtype=np.uint8)
        k = 0 if i == 1 else int(rng.integers(1, 7))
        p1 = rng.uniform(0, [w - 8, h - 8], (k, 2))
        p2 = np.minimum(p1 + rng.uniform(6, 40, (k, 2)), [w, h])
        boxes = np.concatenate([p1, p2], -1).astype(np.float32)
        for x1, y1, x2, y2 in boxes.astype(int):
            image[y1:y2, x1:x2] = rng.integers(0, 100, 3)
        out.append(dict(image=image, boxes=boxes, classes=rng.integers(0, 10, k).astype(np.int32), image_id=i))
    return out


@pytest.fixture
def source(monkeypatch):
    """Installs an in-memory `load_split`; returns {'calls': [...], 'train': examples, 'test': examples}."""
    data = {'train': make_examples(NUM_TRAIN, 0), 'test': make_examples(NUM_TEST, 1), 'calls': []}
    signature = {
        'image': tf.TensorSpec([None, None, 3], tf.uint8),
        'boxes': tf.TensorSpec([None, 4], tf.float32),
        'classes': tf.TensorSpec([None], tf.int32),
        'image_id': tf.TensorSpec([], tf.int64),
    }

    def load_split(config, split, *, process_index=0, process_count=1):
        examples = data[split][process_index::process_count]

        def gen():
            data['calls'].append(split)  # one call per pass over the source
            yield from examples

        ds = tf.data.Dataset.from_generator(gen, output_signature=signature)
        ds = ds.apply(tf.data.experimental.assert_cardinality(len(examples)))
        return ds, FakeSplitInfo(len(data[split]), tuple(str(c) for c in range(10)))

    from yolo_jax.data import sources

    monkeypatch.setattr(sources, 'load_split', load_split)
    monkeypatch.setattr(sources, 'class_source', lambda config: (tuple(str(c) for c in range(10)), 'the test source'))
    monkeypatch.setattr(sources, 'prepare', lambda config: None)
    return data


def train_ds(config, epoch: int, batch_size: int, skip_batches: int = 0, data=None):
    return (data or input_pipeline.Data(config)).train_epoch(epoch, batch_size, skip_batches)


def eval_batches(config, batch_size: int) -> list[dict]:
    return list(input_pipeline.Data(config).eval_batches(batch_size))


def get_config(model: str = 'yolov3', size: int = 96, augment: bool = True):
    spec = importlib.util.spec_from_file_location('mnist_config', REPO / 'configs' / 'mnist.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model = model_config(model, num_classes=10, input_size=size)
    config.data.augment = augment
    config.data.max_bbox_per_scale = 5
    config.data.max_boxes = 4  # fewer than some images have: 'boxes' truncates, targets do not
    return config


def batches(ds) -> list[dict]:
    return list(ds.as_numpy_iterator())


def check_batch(batch: dict, config, b: int) -> None:
    s, c = config.model.input_size, config.model.num_classes
    assert batch['image'].shape == (b, s, s, 3) and batch['image'].dtype == np.float32
    assert 0.0 <= batch['image'].min() and batch['image'].max() <= 1.0
    assert len(batch['labels']) == len(batch['bboxes']) == len(config.model.strides)
    for label, bbox, stride in zip(batch['labels'], batch['bboxes'], config.model.strides, strict=True):
        assert label.shape == (b, s // stride, s // stride, 3, 5 + c) and label.dtype == np.float32
        assert bbox.shape == (b, config.data.max_bbox_per_scale, 4) and bbox.dtype == np.float32
    assert batch['boxes'].shape == (b, config.data.max_boxes, 4) and batch['boxes'].dtype == np.float32
    assert batch['classes'].shape == (b, config.data.max_boxes) and batch['classes'].dtype == np.int32
    assert batch['orig_size'].shape == (b, 2) and batch['orig_size'].dtype == np.int32
    assert batch['valid'].shape == (b,) and batch['valid'].dtype == np.float32
    assert batch['image_id'].shape == (b,)
    assert np.all(batch['boxes'][batch['classes'] < 0] == 0)


@pytest.mark.parametrize(('model', 'size'), [('yolov3', 96), ('yolov3_tiny', 128)])
def test_shapes_and_dtypes(source, model, size):
    config = get_config(model, size)
    ds = train_ds(config, 0, 4)
    assert all(spec.shape.is_fully_defined() for spec in tf.nest.flatten(ds.element_spec))  # static for the trainer
    train = batches(ds)
    assert len(train) == NUM_TRAIN // 4
    for batch in train:
        check_batch(batch, config, 4)
        assert np.all(batch['valid'] == 1)
    evals = eval_batches(config, 4)
    assert len(evals) == 2
    for batch in evals:
        check_batch(batch, config, 4)
    np.testing.assert_array_equal(evals[-1]['valid'], [1, 1, 1, 0])
    assert np.all(evals[-1]['classes'][3] == -1) and np.all(evals[-1]['labels'][0][3] == 0)
    np.testing.assert_array_equal(np.concatenate([e['image_id'] for e in evals])[:NUM_TEST], np.arange(NUM_TEST))


def test_eval_matches_source_and_encoder(source):
    config = get_config('yolov3', 96)
    params = targets.TargetParams.from_spec(spec_of(config), config.data)
    evals = eval_batches(config, 3)
    rows = [
        {k: (v[i] if not isinstance(v, tuple) else tuple(x[i] for x in v)) for k, v in b.items()}
        for b in evals
        for i in range(3)
    ]
    for ex, row in zip(source['test'], rows, strict=False):
        h, w = ex['image'].shape[:2]
        np.testing.assert_array_equal(row['orig_size'], [h, w])
        want_image, want_boxes = letterbox.letterbox(tf.constant(ex['image']), tf.constant(ex['boxes']), 96)
        np.testing.assert_array_equal(row['image'], want_image.numpy())
        k = min(len(ex['boxes']), config.data.max_boxes)
        np.testing.assert_array_equal(row['boxes'][:k], want_boxes.numpy()[:k])
        np.testing.assert_array_equal(row['classes'][:k], ex['classes'][:k])
        np.testing.assert_allclose(letterbox.unletterbox_boxes(row['boxes'][:k], h, w, 96), ex['boxes'][:k], atol=1e-3)
        # Targets come from all boxes, not only the max_boxes kept for evaluation.
        labels, lists = targets.encode_targets(want_boxes, tf.constant(ex['classes']), params)
        for got, want in zip(row['labels'] + row['bboxes'], labels + lists, strict=True):
            np.testing.assert_array_equal(got, want.numpy())


def test_determinism_epochs_and_resume(source):
    config = get_config('yolov3', 96)
    data = input_pipeline.Data(config)
    a = batches(train_ds(config, 3, 2, data=data))
    b = batches(train_ds(config, 3, 2, data=data))
    assert len(a) == NUM_TRAIN // 2
    for x, y in zip(a, b, strict=True):
        for u, v in zip(tf.nest.flatten(x), tf.nest.flatten(y), strict=True):
            np.testing.assert_array_equal(u, v)
    ids = lambda bs: np.concatenate([x['image_id'] for x in bs]).tolist()
    other = batches(train_ds(config, 4, 2, data=data))
    assert ids(other) != ids(a)
    resumed = batches(train_ds(config, 3, 2, skip_batches=2, data=data))
    assert len(resumed) == len(a) - 2
    for x, y in zip(a[2:], resumed, strict=True):
        for u, v in zip(tf.nest.flatten(x), tf.nest.flatten(y), strict=True):
            np.testing.assert_array_equal(u, v)
    # Decoded once, then served from the cache across epochs.
    assert source['calls'].count('train') == 1
    # The shards of two processes are disjoint and cover their own examples.
    shard = batches(train_ds(config, 3, 2, data=input_pipeline.Data(config, process_index=1, process_count=2)))
    assert set(ids(shard)) <= set(range(1, NUM_TRAIN, 2)) and len(shard) == 2


def test_augment_off_is_plain_letterbox_and_info(source):
    config = get_config('yolov3_tiny', 128, augment=False)
    config.data.resize = 'stretch'
    data = input_pipeline.Data(config)
    batch = batches(train_ds(config, 0, NUM_TRAIN, data=data))[0]
    by_id = {ex['image_id']: ex for ex in source['train']}
    for i, image_id in enumerate(batch['image_id']):
        ex = by_id[image_id]
        want_image, want_boxes = letterbox.stretch(tf.constant(ex['image']), tf.constant(ex['boxes']), 128)
        np.testing.assert_array_equal(batch['image'][i], want_image.numpy())
        k = min(len(ex['boxes']), 4)
        np.testing.assert_array_equal(batch['boxes'][i, :k], want_boxes.numpy()[:k])
    assert data.num_examples('train') == NUM_TRAIN
    assert data.steps_per_epoch(4) == NUM_TRAIN // 4
    config.train.steps_per_epoch = 7
    assert data.steps_per_epoch(4) == 7


def test_eval_batches_padded_to_the_same_count_on_every_process(source):
    """7 test examples over 3 processes (shards 3, 2, 2), batch 2: every process yields 2 batches."""
    config = get_config('yolov3', 96)
    counts, real = [], []
    for p in range(3):
        got = list(input_pipeline.Data(config, process_index=p, process_count=3).eval_batches(2))
        counts.append(len(got))
        real.append(int(sum(b['valid'].sum() for b in got)))
        for b in got:
            check_batch(b, config, 2)
    assert counts == [2, 2, 2] and real == [3, 2, 2]


def test_train_batches_stream_epochs_from_a_resume_step(source):
    config = get_config('yolov3', 96)
    data = input_pipeline.Data(config)
    spe = data.steps_per_epoch(2)  # 5
    stream = data.train_batches(spe + 3, spe, 2)
    got = [next(stream) for _ in range(spe)]
    assert [e for e, _ in got] == [1, 1] + [2] * (spe - 2)
    want = batches(train_ds(config, 1, 2, data=data))[3:5] + batches(train_ds(config, 2, 2, data=data))[: spe - 2]
    for (_, x), y in zip(got, want, strict=True):
        np.testing.assert_array_equal(x['image'], y['image'])


def test_mosaic_and_hsv_replay_and_keep_the_epoch_length(source):
    """With mosaic and HSV on, (seed, epoch, step) still fixes every batch (resume replays it) and an epoch has
    as many batches as without."""
    config = get_config('yolov3', 96)
    config.data.mosaic = 1.0
    config.data.hsv_gains = (0.015, 0.7, 0.4)
    data = input_pipeline.Data(config)
    a = batches(train_ds(config, 3, 2, data=data))  # the first pass: 4 streams read the source while caching it
    plain = batches(train_ds(get_config('yolov3', 96), 3, 2))  # mosaic and HSV off (its own Data)
    calls = len(source['calls'])
    assert len(a) == len(plain) == NUM_TRAIN // 2
    for x in a:
        check_batch(x, config, 2)
    resumed = batches(train_ds(config, 3, 2, skip_batches=2, data=data))  # a fresh pipeline, from step 2
    assert len(resumed) == len(a) - 2
    for x, y in zip(a[2:], resumed, strict=True):
        for u, v in zip(tf.nest.flatten(x), tf.nest.flatten(y), strict=True):
            np.testing.assert_array_equal(u, v)
    other = batches(train_ds(config, 4, 2, data=data))
    assert not np.array_equal(other[0]['image'], a[0]['image'])
    assert len(source['calls']) == calls  # later passes come from the cache
    # Same order of main examples as without mosaic; every one became a mosaic (its 'orig_size' is the canvas).
    for x, y in zip(a, plain, strict=True):
        np.testing.assert_array_equal(x['image_id'], y['image_id'])
        np.testing.assert_array_equal(x['orig_size'], np.full((2, 2), 96))
        assert not np.array_equal(x['image'], y['image'])


def test_hsv_alone_changes_colours_not_boxes_and_bad_values(source):
    config = get_config('yolov3', 96, augment=False)
    data = input_pipeline.Data(config)
    plain = batches(train_ds(config, 0, 4, data=data))
    config.data.hsv_gains = (0.015, 0.7, 0.4)
    jittered = batches(train_ds(config, 0, 4, data=data))
    for x, y in zip(plain, jittered, strict=True):
        np.testing.assert_array_equal(x['boxes'], y['boxes'])
        np.testing.assert_array_equal(x['labels'][0], y['labels'][0])
        assert np.abs(x['image'] - y['image']).mean() > 0.01
    for field, value in [('mosaic', 1.5), ('mosaic', -0.1), ('hsv_gains', (0.1, 0.2)), ('hsv_gains', (0.1, 0.2, -1)),
                         ('vertical_flip', 1.5), ('transpose', -0.5)]:
        bad = get_config('yolov3', 96)
        bad.data[field] = value
        with pytest.raises(ConfigError, match=f'config.data.{field}'):
            train_ds(bad, 0, 4)


def multi_scale_config(sizes=(64, 96), every: int = 2):
    config = get_config('yolov3', 96)
    config.train.multi_scale_sizes = sizes
    config.train.multi_scale_every_steps = every
    return config


def test_multi_scale_size_is_a_pure_function_of_seed_and_step_chunk():
    config = multi_scale_config((224, 256, 288), every=10)
    sizes = [input_pipeline.train_input_size(spec_of(config), config.train, s) for s in range(3000)]
    chunks = np.reshape(sizes, (300, 10))
    assert np.all(chunks == chunks[:, :1])  # constant for 10 steps, then a new draw
    counts = {s: int(np.sum(chunks[:, 0] == s)) for s in (224, 256, 288)}
    assert set(chunks[:, 0]) == {224, 256, 288} and min(counts.values()) > 70, counts  # ~100 each (binomial sd 8)
    assert np.mean(chunks[1:, 0] != chunks[:-1, 0]) > 0.5  # it switches (2/3 of the time for a uniform draw)
    # Nothing but (seed, step // every) matters: not the run's shape, epoch length or input size.
    other = multi_scale_config((224, 256, 288), every=10)
    other.train.epochs, other.train.batch_size, other.model.input_size, other.train.steps_per_epoch = 3, 8, 416, 7
    assert [input_pipeline.train_input_size(spec_of(other), other.train, s) for s in range(3000)] == sizes
    other.train.seed = 1
    assert [input_pipeline.train_input_size(spec_of(other), other.train, s) for s in range(3000)] != sizes
    # Off: every step at config.model.input_size.
    off = get_config('yolov3', 96)
    assert {input_pipeline.train_input_size(spec_of(off), off.train, s) for s in range(50)} == {96}


@pytest.mark.parametrize(('field', 'value'), [
    ('multi_scale_sizes', (64, 80)), ('multi_scale_sizes', (0, 64)), ('multi_scale_sizes', (64.0,)),
    ('multi_scale_every_steps', 0),
])
def test_multi_scale_bad_config_names_the_field(source, field, value):
    config = multi_scale_config()
    config.train[field] = value
    with pytest.raises(ConfigError, match=f'config.train.{field}'):
        input_pipeline.Data(config)  # at start-up, before any data is read
    assert source['calls'] == []


def test_multi_scale_batches_equal_the_single_size_pipeline_at_each_steps_size(source):
    """Batch k of a multi-scale epoch is the one-size pipeline's batch k at that step's size: the same order,
    augmentation, letterbox and targets, with grids size / stride; BN recalibration's batches stay one-size."""
    config = multi_scale_config((64, 96), every=2)
    config.train.seed = 5  # sizes 96, 96, 64, 64, 96 | 96, 64, 64, 96, 96 over the first two 5-step epochs
    data = input_pipeline.Data(config)
    got = batches(data.train_epoch(0, 2, first_step=0))
    want_sizes = [input_pipeline.train_input_size(spec_of(config), config.train, s) for s in range(len(got))]
    assert len(got) == 5 and set(want_sizes) == {64, 96}  # both sizes occur, so both are compared below
    single = {}
    for size in (64, 96):
        one = get_config('yolov3', size)
        one.train.seed = 5
        single[size] = batches(train_ds(one, 0, 2))
    for k, (batch, size) in enumerate(zip(got, want_sizes, strict=True)):
        check_batch(batch, get_config('yolov3', size), 2)  # image (2, S, S, 3), labels (2, S/8, S/8, 3, 15), ...
        for u, v in zip(tf.nest.flatten(batch), tf.nest.flatten(single[size][k]), strict=True):
            np.testing.assert_array_equal(u, v)
    # No step given (BatchNorm recalibration): config.model.input_size = 96 throughout.
    for x, y in zip(batches(data.train_epoch(0, 2)), single[96], strict=True):
        for u, v in zip(tf.nest.flatten(x), tf.nest.flatten(y), strict=True):
            np.testing.assert_array_equal(u, v)
    assert source['calls'].count('train') == 3  # once per Data: every size from one decoding


def test_multi_scale_train_batches_replay_the_sizes_after_a_resume(source):
    """train_batches from step 3 (mid-epoch, mid-chunk) yields the uninterrupted stream's steps 3.. exactly,
    across the epoch boundary and two size switches."""
    config = multi_scale_config((64, 96), every=2)
    config.train.seed = 5
    data = input_pipeline.Data(config)
    spe = data.steps_per_epoch(2)  # 5
    stream = data.train_batches(0, spe, 2)
    full = [next(stream) for _ in range(7)]
    resumed = data.train_batches(3, spe, 2)
    for step in range(3, 7):
        epoch, batch = next(resumed)
        size = input_pipeline.train_input_size(spec_of(config), config.train, step)
        assert epoch == full[step][0] == step // spe
        assert batch['image'].shape[1:3] == full[step][1]['image'].shape[1:3] == (size, size)
        assert [x.shape[1] for x in batch['labels']] == [size // 8, size // 16, size // 32]
        for u, v in zip(tf.nest.flatten(batch), tf.nest.flatten(full[step][1]), strict=True):
            np.testing.assert_array_equal(u, v)
    assert [input_pipeline.train_input_size(spec_of(config), config.train, s) for s in range(3, 7)] == [64, 96, 96, 64]


@pytest.mark.parametrize('variant', ['plain', 'mosaic', 'multi_scale', 'mosaic_multi_scale'])
def test_one_dataset_over_all_epochs_equals_the_per_epoch_pipelines(source, variant):
    """train_batches (one tf.data pipeline over every epoch) from mid-epoch 1 yields, batch by batch for 3 epochs,
    what one pipeline per epoch (train_epoch, skipping the seen batches of the first) yields: the same epochs,
    order, augmentation, mosaics and multi-scale sizes; 'plain' cuts epochs short with config.train.steps_per_epoch
    (4 of the 5 full batches)."""
    config = multi_scale_config((64, 96), every=2) if 'multi_scale' in variant else get_config('yolov3', 96)
    config.train.seed = 5
    if 'mosaic' in variant:
        config.data.mosaic, config.data.hsv_gains = 0.75, (0.015, 0.7, 0.4)
    if variant == 'plain':
        config.train.steps_per_epoch = 4
    data = input_pipeline.Data(config)
    spe = data.steps_per_epoch(2)
    assert spe == (4 if variant == 'plain' else 5)
    start_epoch, skip = 1, 2
    stream = data.train_batches(start_epoch * spe + skip, spe, 2)
    got = [next(stream) for _ in range(3 * spe - skip)]
    want = []
    for epoch in range(start_epoch, start_epoch + 3):
        first = skip if epoch == start_epoch else 0
        epoch_batches = batches(data.train_epoch(epoch, 2, first, first_step=epoch * spe))[: spe - first]
        want += [(epoch, b) for b in epoch_batches]
    assert [e for e, _ in got] == [e for e, _ in want] == [1] * (spe - skip) + [2] * spe + [3] * spe
    sizes = [b['image'].shape[1] for _, b in got]
    steps = range(start_epoch * spe + skip, (start_epoch + 3) * spe)
    assert sizes == [input_pipeline.train_input_size(spec_of(config), config.train, s) for s in steps]
    if 'multi_scale' in variant:
        assert set(sizes) == {64, 96}
    for (_, x), (_, y) in zip(got, want, strict=True):
        for u, v in zip(tf.nest.flatten(x), tf.nest.flatten(y), strict=True):
            np.testing.assert_array_equal(u, v)
    assert source['calls'].count('train') == 1  # decoded once, then every epoch of both from the cache


def test_train_batches_short_shard_fails_at_once(source):
    config = get_config('yolov3', 96)
    config.train.steps_per_epoch = 6  # the 11 examples give 5 batches of 2
    data = input_pipeline.Data(config)
    with pytest.raises(DataError, match='holds 5 batches of 2 on process 0, fewer than the 6 steps per epoch'):
        data.train_batches(0, data.steps_per_epoch(2), 2)


class SlowToFree:
    """An iterable whose destructor takes `seconds` (as a tf.data iterator's can: up to 60 s) and records the
    thread it ran on."""

    def __init__(self, items: list, seconds: float, freed: list, done: threading.Event):
        self.items, self.seconds, self.freed, self.done = items, seconds, freed, done

    def __iter__(self):
        return iter(self.items)

    def __del__(self):
        time.sleep(self.seconds)
        self.freed.append(threading.current_thread())
        self.done.set()


@pytest.mark.parametrize('abandon', [False, True])
def test_release_in_background_frees_off_the_consumer_thread(abandon):
    """Exhausting or abandoning the stream leaves the slow destructor to another thread, where it runs once."""
    freed, done = [], threading.Event()
    stream = input_pipeline.release_in_background(SlowToFree([1, 2, 3], 1.0, freed, done))
    if abandon:
        assert next(stream) == 1
        stream.close()
    else:
        assert list(stream) == [1, 2, 3]
    assert done.wait(10)
    assert len(freed) == 1 and freed[0] is not threading.main_thread()


def test_stream_abandoned_at_interpreter_exit_does_not_hang_the_exit():
    """A half-read stream still referenced when the interpreter exits (e.g. from the traceback of the error that
    ends a run) is collected during finalization, when no new thread can start: the process still exits."""
    import subprocess
    import sys

    script = ('import sys\n'
              'from yolo_jax.input_pipeline import release_in_background\n'
              'stream = release_in_background(iter([1, 2]))\n'
              'assert next(stream) == 1\n'
              'sys.exit(3)\n')
    proc = subprocess.run([sys.executable, '-c', script], cwd=Path(__file__).parent.parent, capture_output=True,
                          text=True, timeout=300)  # a hang guard: the exit takes seconds (importing TensorFlow)
    assert proc.returncode == 3, proc.stderr[-2000:]
