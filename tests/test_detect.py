"""--mode=detect end to end on a tiny random model, checkpoint loading errors, and the drawing helpers."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import spec_of
from PIL import Image

from configs.mnist import get_config
from yolo_jax import checkpointing, detect, inference, steps, visualize


def small_config(score_threshold: float = 0.05):
    """tiny,smoke (YOLOv3-tiny, width 1/8, input 64, 10 classes) with a low threshold so that a random
    model finds boxes."""
    config = get_config('tiny,smoke')
    config.eval.score_threshold = score_threshold
    config.eval.max_detections = 20
    config.train.eval_batch_size = 2
    return config


def make_workdir(path: Path, config) -> Path:
    """A workdir holding one checkpoint of a randomly initialised model (saved as training saves it)."""
    _, _, state = steps.build_model_and_state(config, 1)
    manager = checkpointing.create_manager(path)
    metrics = {checkpointing.BEST_METRIC: 1.0}
    meta = {**checkpointing.run_meta(config, spec_of(config)), 'epoch': 1, 'step': 1, 'metrics': metrics}
    checkpointing.save(manager, 1, state, meta, metrics=metrics)
    manager.wait_until_finished()
    return path


@pytest.fixture(scope='module')
def workdir(tmp_path_factory) -> Path:
    return make_workdir(tmp_path_factory.mktemp('workdir'), small_config())


def write_images(folder: Path) -> list[Path]:
    """Three RGB images of different shapes (wide PNG, tall JPEG, greyscale square PNG)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    shapes = (('wide.png', (40, 90), 'RGB'), ('tall.jpg', (100, 50), 'RGB'), ('grey.png', (64, 64), 'L'))
    for name, (h, w), mode in shapes:
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        pixels[h // 4 : h // 2, w // 4 : w // 2] = 0  # some structure
        image = Image.fromarray(pixels).convert(mode)
        image.save(folder / name)
        paths.append(folder / name)
    return paths


def test_detect_end_to_end(workdir, tmp_path):
    config = small_config()
    paths = write_images(tmp_path / 'images')
    out = tmp_path / 'out'
    results = detect.detect_images(config, workdir, str(tmp_path / 'images'), output=out)
    assert [Path(r['file']).name for r in results] == sorted(p.name for p in paths)
    assert sum(len(r['scores']) for r in results) > 0  # the low threshold lets a random model draw boxes
    saved = json.loads((out / 'detections.json').read_text())
    assert saved == {'images': results, 'errors': [], 'complete': True}
    for r in results:
        original = np.asarray(Image.open(r['file']).convert('RGB'))
        drawn = np.asarray(Image.open(r['output']))
        assert drawn.shape == original.shape == (r['height'], r['width'], 3)
        n = len(r['scores'])
        assert len(r['boxes']) == len(r['classes']) == len(r['class_names']) == n
        assert r['class_names'] == [str(c) for c in r['classes']]  # MNIST: '0'..'9'
        assert r['scores'] == sorted(r['scores'], reverse=True) and all(s > 0.05 for s in r['scores'])
        if n:
            boxes = np.asarray(r['boxes'])
            assert np.all(boxes >= 0)
            assert np.all(boxes[:, 2] <= r['width'] - 1) and np.all(boxes[:, 3] <= r['height'] - 1)
            assert np.any(drawn != original)  # something was drawn
        else:
            np.testing.assert_array_equal(drawn, original)

    # A single file and a glob give the same detections; batch size (and so last-batch padding) does not matter.
    one = detect.detect_images(config, workdir, paths[1], output=tmp_path / 'one', batch_size=1)
    same = [r for r in results if r['file'] == str(paths[1])]
    assert len(one) == 1 and one[0]['classes'] == same[0]['classes']
    np.testing.assert_allclose(one[0]['boxes'], same[0]['boxes'], atol=1e-3)
    np.testing.assert_allclose(one[0]['scores'], same[0]['scores'], rtol=1e-4)
    globbed = detect.detect_images(config, workdir, str(tmp_path / 'images' / '*.png'), output=tmp_path / 'g')
    assert [Path(r['file']).name for r in globbed] == ['grey.png', 'wide.png']


def test_detect_matches_eval_pipeline_preprocessing(workdir, tmp_path):
    """The detect path (PIL + TF letterbox) feeds the network the same pixels as the input pipeline's map."""
    import tensorflow as tf

    from yolo_jax import input_pipeline

    config = small_config()
    path = write_images(tmp_path)[0]
    image = detect.load_image(path)
    prepare = input_pipeline._prepare_fn(config, config.model.input_size, augment_seed=None)
    example = {'image': tf.constant(image), 'boxes': tf.zeros((0, 4)), 'classes': tf.zeros((0,), tf.int32),
               'image_id': tf.constant(0)}
    expect = prepare(tf.constant(0, tf.int64), example)['image'].numpy()
    np.testing.assert_array_equal(detect.prepare_image(image, config.model.input_size), expect)


@pytest.mark.parametrize('ext', ['jpg', 'png', 'tiff'])
def test_one_decoder_gives_training_evaluation_and_detection_the_same_pixels(tmp_path, ext):
    """A photo-like JPEG (PIL's and TF's JPEG decoders differ by up to 8 levels), a PNG and a TIFF (PIL-only): the
    tf.data pipeline that training and evaluation read and detect's loader give identical arrays."""
    from yolo_jax.data import annotations, sources

    y, x = np.mgrid[0:61, 0:83]
    pixels = np.stack([x * 3, y * 4, (x * y) % 256], -1).astype(np.uint8)  # smooth gradients + texture
    path = tmp_path / f'photo.{ext}'
    Image.fromarray(pixels).save(path, **({'quality': 75} if ext == 'jpg' else {}))
    ann = tmp_path / 'train.txt'
    ann.write_text(f'{path} 1,1,20,20,0\n')
    records = annotations.read_annotations(ann, ['a'])
    piped = next(iter(sources.annotation_records_dataset(records)))['image'].numpy()
    loaded = detect.load_image(path)
    np.testing.assert_array_equal(loaded, piped)
    if ext == 'jpg':  # the point: PIL alone would not give these pixels
        with Image.open(path) as im:
            assert np.any(np.asarray(im.convert('RGB')) != loaded)
    else:
        np.testing.assert_array_equal(loaded, pixels)


def test_missing_checkpoint_and_bad_inputs(workdir, tmp_path):
    config = small_config()
    images = write_images(tmp_path / 'images')
    with pytest.raises(FileNotFoundError, match='does not exist'):
        detect.detect_images(config, tmp_path / 'nowhere', images[0])
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='no checkpoint'):
        detect.detect_images(config, tmp_path / 'empty', images[0])
    with pytest.raises(FileNotFoundError, match='no such file'):
        detect.detect_images(config, workdir, images[0], weights=tmp_path / 'missing.weights')
    with pytest.raises(FileNotFoundError, match='no file, directory or glob'):
        detect.detect_images(config, workdir, str(tmp_path / 'nothing*.png'))
    broken = tmp_path / 'broken.png'
    broken.write_bytes(b'not an image')
    with pytest.raises(ValueError, match='broken.png'):
        detect.detect_images(config, workdir, broken, output=tmp_path / 'out')


def test_the_checkpoint_not_the_config_says_what_was_trained(workdir):
    """eval/detect/export need no training flags: another class count, input size and anchors in the config play
    no part; the checkpoint's model and spec are used."""
    config = small_config()
    _, trained, spec = inference.load_detector(config, workdir, fold=False)
    config.model.num_classes, config.model.input_size = 3, 2 * config.model.input_size
    config.model.anchors = tuple(tuple((2 * w, h) for w, h in scale) for scale in config.model.anchors)
    model, variables, got = inference.load_detector(config, workdir, fold=False)
    assert got == spec and got.num_classes == model.num_classes == 10 and got.input_size == config.model.input_size // 2
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(trained), strict=True):
        np.testing.assert_array_equal(a, b)


def test_class_names_come_from_the_checkpoint_or_the_data_set(workdir, tmp_path):
    config = small_config()
    assert inference.load_detector(config, workdir, fold=False)[2].class_names == tuple(str(i) for i in range(10))
    names = tmp_path / 'names.txt'
    names.write_text('\n'.join(f'digit {i}' for i in range(10)) + '\n')
    config.data.update(dataset='annotations', class_names=str(names))
    assert inference.inference_spec(config).class_names[3] == 'digit 3'
    config.model.num_classes = 80
    with pytest.raises(ValueError, match=r'config.model.num_classes=80 but .* has 10 classes'):
        inference.inference_spec(config)


def test_draw_detections_and_grid():
    image = np.full((50, 80, 3), 255, np.uint8)
    boxes, classes, scores = np.array([[10, 20, 40, 45]]), np.array([2]), np.array([0.9])
    drawn = visualize.draw_detections(image, boxes, classes, scores, ['a', 'b', 'c'])
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert np.all(image == 255)  # input untouched
    colour = visualize.class_color(2)
    assert tuple(drawn[45, 25]) == colour and tuple(drawn[30, 10]) == colour  # bottom and left edges
    assert tuple(drawn[30, 25]) == (255, 255, 255)  # interior untouched
    assert visualize.class_color(0) != visualize.class_color(1)
    empty = visualize.draw_detections(image, np.zeros((0, 4)), np.zeros(0, int), np.zeros(0), None)
    np.testing.assert_array_equal(empty, image)

    tiles = [np.zeros((10, 20, 3), np.uint8), np.ones((5, 5), np.float32), np.zeros((10, 20, 3), np.uint8)]
    g = visualize.grid(tiles, ncols=2, pad=1)
    assert g.shape == (2 * 11 + 1, 2 * 21 + 1, 3) and g.dtype == np.uint8
    assert np.all(g[1:11, 1:21] == 0) and np.all(g[1:6, 22:27] == 255) and np.all(g[0] == 255)


@pytest.mark.filterwarnings('ignore:config.model.bn_epsilon')
def test_detect_with_darknet_weights(workdir, tmp_path):
    """--weights: the same variables written as a Darknet file give the same detections, without a workdir."""
    from yolo_jax import darknet

    config = small_config()
    _, variables = inference.load_variables(config, workdir, fold=False)
    weights = tmp_path / 'tiny.weights'
    darknet.save_weights(weights, variables, config.model)
    image = write_images(tmp_path / 'images')[0]
    from_ckpt = detect.detect_images(config, workdir, image, output=tmp_path / 'a')
    from_weights = detect.detect_images(config, None, image, output=tmp_path / 'b', weights=weights)
    assert from_weights[0]['classes'] == from_ckpt[0]['classes']
    np.testing.assert_allclose(from_weights[0]['boxes'], from_ckpt[0]['boxes'], atol=1e-4)
