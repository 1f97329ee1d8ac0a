"""YOLO-format labels as a data set (reading, label-file conventions, validation by file and line), the converter
between the three formats (round trips), and end to end: training through `python -m yolo_jax.main` on YOLO labels,
then --mode=detect on the test images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from detection_fixtures import CLASS_NAMES, TEST, TRAIN, write_coco, write_images, write_yolo

from configs.mnist import get_config
from yolo_jax.data import annotations as ann
from yolo_jax.data import coco_json, convert, sources, yolo_txt
from yolo_jax.data.annotations import AnnotationWarning

REPO = Path(__file__).resolve().parents[1]


def _expected(specs, drop_crowd=True):
    """(boxes, classes) per image as the YOLO fixture holds them (crowd boxes are not written)."""
    out = []
    for s in specs:
        keep = ~s.crowd_flags() if drop_crowd else np.ones(len(s.classes), bool)
        out.append((np.asarray(s.boxes, float).reshape(-1, 4)[keep], np.asarray(s.classes, int)[keep]))
    return out


@pytest.fixture(scope='module')
def yolo_set(tmp_path_factory):
    root = tmp_path_factory.mktemp('yolo')
    return root, write_yolo(root, TRAIN, 'train'), write_yolo(root, TEST, 'test')


def test_reads_normalised_boxes_in_pixels(yolo_set):
    root, _, test_images = yolo_set
    records = yolo_txt.read_yolo_txt(test_images, CLASS_NAMES)
    assert [Path(r.path).name for r in records] == [s.name for s in TEST]
    for r, (boxes, classes), spec in zip(records, _expected(TEST), TEST, strict=True):
        assert (r.width, r.height) == (spec.width, spec.height) and r.boxes.dtype == np.float32
        np.testing.assert_allclose(r.boxes, boxes, atol=1e-4)  # 8 decimals of normalised coordinates
        np.testing.assert_array_equal(r.classes, classes)
    assert len(records[2].classes) == 0  # no label file: an image without objects
    # A list file (Darknet's train.txt) with relative paths, and labels beside the images (Darknet layout).
    flat = root / 'flat'
    write_images(flat, TEST[:1])
    (flat / 'v0.txt').write_text((test_images.parent / 'labels' / 'v0.txt').read_text())
    (root / 'list.txt').write_text('flat/v0.png\n')
    [r] = yolo_txt.read_yolo_txt(root / 'list.txt', 3)
    np.testing.assert_allclose(r.boxes, _expected(TEST)[0][0], atol=1e-4)
    assert yolo_txt.label_path(test_images / 'v0.png') == test_images.parent / 'labels' / 'v0.txt'
    assert yolo_txt.label_path(flat / 'v0.png') == flat / 'v0.txt'


def test_validation_names_file_and_line(tmp_path):
    write_images(tmp_path / 'images', TEST[:1])
    label = tmp_path / 'labels' / 'v0.txt'
    label.parent.mkdir()
    label.write_text('0 0.5 0.5 0.2 0.2\n'
                     '3 0.5 0.5 0.2 0.2\n'  # unknown class
                     '1 0.5 0.5 0.2\n'  # 4 fields
                     'a 0.5 0.5 0.2 0.2\n'  # class not an integer
                     '1 0.5 0.5 0 0.2\n'  # empty
                     '\n'
                     '2 64 48 20 30\n'  # pixel coordinates
                     '1 0.5 nan 0.2 0.2\n')
    with pytest.raises(yolo_txt.YoloTxtError) as e:
        yolo_txt.read_yolo_txt(tmp_path / 'images', CLASS_NAMES)
    message = str(e.value)
    for line, text in ((2, 'class id 3 not in [0, 3)'), (3, '4 fields'), (4, "class 'a' is not an integer"),
                       (5, 'empty box'), (7, 'values must be normalised to [0, 1]'), (8, 'non-finite')):
        assert f'{label}:{line}: {text}' in message, (line, message)
    assert f'{label}:1' not in message and '6 bad' in message
    label.write_text('0 0.05 0.5 0.3 0.2\n')  # reaches 13 px outside on the left: clipped with a warning
    with pytest.warns(AnnotationWarning, match=f'{label}:1: box reaches outside'):
        [r] = yolo_txt.read_yolo_txt(tmp_path / 'images', CLASS_NAMES)
    np.testing.assert_allclose(r.boxes, [[0, 38.4, 25.6, 57.6]], atol=1e-4)
    with pytest.raises(yolo_txt.YoloTxtError, match='no such image folder'):
        yolo_txt.read_yolo_txt(tmp_path / 'nope', CLASS_NAMES)


def test_converter_round_trips(tmp_path):
    coco_path, coco_images = write_coco(tmp_path, TEST, 'src')
    # coco_json -> yolo_txt -> coco_json: boxes within 1e-4 px, crowd boxes left out by YOLO (no way to mark them).
    images = convert.convert('coco_json', 'yolo_txt', str(coco_path), str(tmp_path / 'y'), images=str(coco_images))
    assert images == tmp_path / 'y' / 'images' and (tmp_path / 'y' / 'labels' / 'v0.txt').is_file()
    back = convert.convert('yolo_txt', 'coco_json', str(images), str(tmp_path / 'c'),
                           class_names=str(tmp_path / 'y' / 'classes.txt'))
    records, names = coco_json.read_coco_json(back, tmp_path / 'c' / 'images')
    assert names == CLASS_NAMES
    for r, (boxes, classes) in zip(records, _expected(TEST), strict=True):
        np.testing.assert_allclose(r.boxes, boxes, atol=1e-4)
        np.testing.assert_array_equal(r.classes, classes)
    # coco_json -> coco_json keeps everything exactly, crowd flags included.
    same = convert.convert('coco_json', 'coco_json', str(coco_path), str(tmp_path / 'cc'), images=str(coco_images))
    records, _ = coco_json.read_coco_json(same, tmp_path / 'cc' / 'images')
    for r, spec in zip(records, TEST, strict=True):
        np.testing.assert_array_equal(r.boxes, np.asarray(spec.boxes, np.float32).reshape(-1, 4))
        np.testing.assert_array_equal(r.difficult_flags(), spec.crowd_flags())
    # -> the reference's text format (integer boxes: 70.5 rounds to 70 (half to even)) and back to COCO.
    txt = convert.convert('coco_json', 'annotations', str(coco_path), str(tmp_path / 'a'), images=str(coco_images))
    records = ann.read_annotations(txt, ann.read_class_names(tmp_path / 'a' / 'classes.txt'), keep_empty=True)
    for r, (boxes, classes) in zip(records, _expected(TEST), strict=True):
        np.testing.assert_array_equal(r.boxes, np.rint(boxes))
        np.testing.assert_array_equal(r.classes, classes)
    again = convert.convert('annotations', 'coco_json', str(txt), str(tmp_path / 'ac'),
                            class_names=str(tmp_path / 'a' / 'classes.txt'))
    assert len(json.loads(again.read_text())['annotations']) == sum(len(c) for _, c in _expected(TEST))
    with pytest.raises(FileExistsError):
        convert.convert('coco_json', 'yolo_txt', str(coco_path), str(tmp_path / 'y'), images=str(coco_images))
    # The command line.
    proc = subprocess.run([sys.executable, '-m', 'yolo_jax.data.convert', '--from=coco_json', f'--input={coco_path}',
                           f'--images={coco_images}', '--to=yolo_txt', f'--output={tmp_path / "cli"}'],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / 'cli' / 'labels' / 'v3.txt').read_text() == (tmp_path / 'y' / 'labels' / 'v3.txt').read_text()


def test_source_and_class_names(yolo_set):
    root, train_images, test_images = yolo_set
    config = get_config()
    config.data.dataset = 'yolo_txt'
    config.data.train_images, config.data.test_images = str(train_images), str(test_images)
    with pytest.raises(ValueError, match="config.data.class_names: dataset='yolo_txt' needs"):
        sources.get_class_names(config)
    config.data.class_names = str(root / 'classes.txt')
    assert sources.get_class_names(config) == CLASS_NAMES
    ds, info = sources.load_split(config, 'train')
    assert info == sources.SplitInfo(8, CLASS_NAMES)
    for g, (boxes, classes) in zip(tfds.as_numpy(ds), _expected(TRAIN), strict=True):
        np.testing.assert_allclose(g['boxes'], boxes, atol=1e-4)
        np.testing.assert_array_equal(g['classes'], classes)
        assert not g['difficult'].any()
    with pytest.raises(ValueError, match='split must be one of'):
        sources.load_split(config, 'validation')


@pytest.mark.slow
def test_train_and_detect_end_to_end(yolo_set, tmp_path):
    from test_coco_json import run_main

    root, train_images, test_images = yolo_set
    workdir = tmp_path / 'run'
    overrides = ['--config.data.dataset=yolo_txt', f'--config.data.train_images={train_images}',
                 f'--config.data.test_images={test_images}', f'--config.data.class_names={root / "classes.txt"}',
                 '--config.model.num_classes=3', '--config.eval.score_threshold=0.0001']
    proc = run_main(workdir, *overrides)
    assert 'epoch: 1 step:    2/2' in proc.stderr and 'mAP@0.5 (VOC)' in proc.stderr
    [final] = [json.loads(x) for x in (workdir / 'metrics.jsonl').read_text().splitlines() if '"map"' in x]
    assert 0.0 <= final['map50'] <= 1.0

    from yolo_jax import detect

    config = get_config('tiny,smoke')
    for o in overrides:
        key, value = o[len('--config.'):].split('=', 1)
        section, field = key.split('.')
        config[section][field] = type(config[section][field])(value)
    detect.detect_images(config, workdir, test_images, output=tmp_path / 'detect')
    listed = json.loads((tmp_path / 'detect' / 'detections.json').read_text())
    assert len(listed['images']) == 4
    assert all((tmp_path / 'detect' / f'{Path(s.name).stem}.png').is_file() for s in TEST)


def test_converter_output_reads_back_through_the_printed_config_flags(tmp_path):
    """Each format the converter writes loads as a training split with the flags it prints (no guessing where its
    images went)."""
    from configs.mnist import get_config

    coco_path, coco_images = write_coco(tmp_path, TEST, 'src')
    for fmt in convert.FORMATS:
        out = tmp_path / fmt
        convert.convert('coco_json', fmt, str(coco_path), str(out), images=str(coco_images))
        config = get_config()
        config.model.num_classes = len(CLASS_NAMES)
        for flag in convert.dataset_flags(fmt, out):
            key, value = flag[len('--config.'):].split('=', 1)
            section, field = key.split('.')
            config[section][field] = value
        _, info = sources.load_split(config, 'train')
        # The reference's format skips images without boxes, as upstream does.
        want = sum(bool(spec.boxes) for spec in TEST) if fmt == 'annotations' else len(TEST)
        assert info.num_examples == want and info.class_names == CLASS_NAMES, fmt
