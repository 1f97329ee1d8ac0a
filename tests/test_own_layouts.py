"""One folder, no flags to guess: the Ultralytics data.yaml layout, layout detection (`dataset='auto'`), the
stable file-name-hash split written to the workdir, num_classes=0 from the data, configs/photos.py's variants,
and end to end through `python -m yolo_jax.main --config=configs/photos.py:smoke --config.data.root=...` on a
generated folder and on BCCD."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from detection_fixtures import CLASS_NAMES, TEST, TRAIN, write_coco, write_images, write_yolo
from PIL import Image
from test_voc_xml import SORTED, bccd_root, check, config_for, write_devkit, write_xml

from configs.photos import get_config
from yolo_jax import run_config
from yolo_jax.data import own_data, sources, yolo_yaml
from yolo_jax.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]


def _yolo_expected(specs):
    """The specs without their crowd boxes (YOLO labels cannot hold them)."""
    return [s._replace(boxes=tuple(b for b, c in zip(s.boxes, s.crowd_flags()) if not c),
                       classes=tuple(k for k, c in zip(s.classes, s.crowd_flags()) if not c), crowd=()) for s in specs]


def check_yolo(records, specs):
    """YOLO records against the specs (8-decimal normalised labels: boxes to 1e-4 px), class ids as written."""
    specs = _yolo_expected(specs)
    assert [Path(r.path).name for r in records] == [s.name for s in specs]
    for r, s in zip(records, specs, strict=True):
        np.testing.assert_allclose(r.boxes, np.asarray(s.boxes, float).reshape(-1, 4), atol=1e-4)
        np.testing.assert_array_equal(r.classes, s.classes)


@pytest.fixture
def ultralytics(tmp_path):
    """tmp/set/{images,labels}/{train,val}, classes.txt, and a data.yaml beside them."""
    root = tmp_path / 'set'
    write_yolo(root / 'tmp_train', TRAIN, 'x')
    write_yolo(root / 'tmp_val', TEST, 'x')
    for split, tmp in (('train', 'tmp_train'), ('val', 'tmp_val')):
        for kind in ('images', 'labels'):
            (root / kind).mkdir(exist_ok=True)
            (root / tmp / 'x' / kind).rename(root / kind / split)
    return root


def test_data_yaml_list_and_dict_names_path_and_roboflow_paths(ultralytics, tmp_path):
    root = ultralytics
    (root / 'data.yaml').write_text('path: .\ntrain: images/train\nval: images/val\nnames: [red, green, blue]\n')
    config = config_for(root / 'data.yaml', dataset='yolo_yaml')
    train, names = own_data.read_split(config, 'train')
    test, _ = own_data.read_split(config, 'test')  # no test: key -> val
    assert names == CLASS_NAMES
    check_yolo(train, TRAIN)
    check_yolo(test, TEST)
    # names as a mapping, `path` elsewhere, nc; the folder holding data.yaml is enough too.
    other = tmp_path / 'cfg' / 'data.yaml'
    other.parent.mkdir()
    other.write_text(f'path: {root}\ntrain: [images/train]\nval: images/val\nnc: 3\n'
                     'names:\n  0: red\n  1: green\n  2: blue\n')
    assert own_data.read_split(config_for(other.parent), 'train')[1] == CLASS_NAMES
    # Roboflow: `../train/images` although the folders sit beside the yaml.
    robo = tmp_path / 'robo'
    write_yolo(robo, TRAIN, 'train')
    write_yolo(robo, TEST, 'valid')
    (robo / 'data.yaml').write_text("train: ../train/images\nval: ../valid/images\nnc: 3\nnames: ['red', 'green', "
                                    "'blue']\n")
    check_yolo(own_data.read_split(config_for(robo), 'test')[0], TEST)
    # Mistakes name the file and the key.
    bad = tmp_path / 'bad.yaml'
    for text, match in (('train: images/train\n', 'no `names`'), ('train: nope\nnames: [a]\n', 'train: no such'),
                        ('train: x\nnames: {0: a, 2: b}\n', 'keys 0..1'), ('names: [a]\nnc: 2\ntrain: x\n', 'nc=2'),
                        ('names: [a, a]\ntrain: x\n', 'duplicated'), ('train: [\n', 'not valid YAML')):
        bad.write_text(text)
        with pytest.raises(yolo_yaml.YoloYamlError, match=match):
            yolo_yaml.read_data_yaml(bad)


def test_layout_detection(tmp_path, ultralytics):
    (ultralytics / 'classes.txt').write_text('red\ngreen\nblue\n')
    devkit = write_devkit(tmp_path / 'devkit')
    flat = tmp_path / 'flat'
    write_images(flat, TRAIN)
    write_xml(flat, TRAIN)
    coco_json, _ = write_coco(tmp_path / 'coco', TRAIN, 'imgs')
    yolo_flat = tmp_path / 'yoloflat'
    write_yolo(yolo_flat, TRAIN, 'all')
    (yolo_flat / 'all' / 'classes.txt').write_text('red\ngreen\nblue\n')
    yaml_file = tmp_path / 'y.yaml'
    yaml_file.write_text(f'path: {ultralytics}\ntrain: images/train\nval: images/val\nnames: [red, green, blue]\n')
    roboflow_voc = tmp_path / 'rvoc'
    for name, specs in (('train', TRAIN), ('valid', TEST)):
        write_images(roboflow_voc / name, specs)
        write_xml(roboflow_voc / name, specs)
    expected = {
        devkit: ('VOC devkit', True), flat: ('VOC flat XML', False), coco_json: ('COCO JSON file', False),
        ultralytics: ('YOLO txt folder with a names file', True), yolo_flat / 'all': ('YOLO txt folder with a names '
                                                                                      'file', False),
        yaml_file: ('Ultralytics data.yaml', True), roboflow_voc: ('VOC flat XML', True),
        tmp_path / 'coco': ('COCO JSON file', False),  # the one .json in the folder
    }
    for root, (kind, has_test) in expected.items():
        layout = own_data.detect_layout(root)
        assert (layout.kind, layout.test is not None) == (kind, has_test), root
    # Each reads what was written.
    check(own_data.read_split(config_for(roboflow_voc), 'test')[0], TEST)
    coco_records, names = own_data.read_split(config_for(coco_json), 'train')
    assert names == CLASS_NAMES and len(coco_records) + len(own_data.read_split(config_for(coco_json), 'test')[0]) == 8
    check_yolo(own_data.read_split(config_for(ultralytics), 'test')[0], TEST)
    # What is none of them names the formats; a layout of another kind than config.data.dataset names both.
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'a.jpg').write_bytes(b'')
    with pytest.raises(DataError, match='none of the supported layouts: VOC devkit, .*COCO JSON'):
        own_data.detect_layout(tmp_path / 'empty')
    with pytest.raises(ConfigError, match="dataset='voc_xml' but .* is a Ultralytics data.yaml"):
        own_data.layout_of(config_for(yaml_file, dataset='voc_xml'))
    with pytest.raises(ConfigError, match='config.data.root'):
        own_data.layout_of(config_for(''))


def test_unknown_dataset_lists_the_formats():
    config = get_config('smoke')
    config.data.dataset = 'pascal'
    with pytest.raises(ConfigError) as e:
        sources.get_class_names(config)
    for name in ('auto', 'voc_xml', 'yolo_yaml', 'coco_json', 'yolo_txt'):
        assert name in str(e.value).split('expected one of ')[1]


def _sha1_test_set(keys, fraction):
    """The oracle: a key is a test key when the first 15 hex digits of its SHA-1, as a fraction, are < fraction."""
    return {k for k in keys if int(hashlib.sha1(k.encode()).hexdigest()[:15], 16) / 16**15 < fraction}


def test_hash_split_is_stable_written_once_and_keeps_old_images_in_place(tmp_path):
    specs = TRAIN + TEST
    root = tmp_path / 'photos'
    write_images(root / 'images', specs)
    write_xml(root / 'annotations', specs)
    split_file = tmp_path / 'run' / 'split.json'
    config = config_for(root, split_file=str(split_file), test_fraction=0.3)
    train, _ = own_data.read_split(config, 'train')
    test, _ = own_data.read_split(config, 'test')
    keys = [f'images/{s.name}' for s in specs]
    want_test = _sha1_test_set(keys, 0.3)
    assert 0 < len(want_test) < len(keys)  # this set needs no minimum-count rule: the oracle is the plain hash
    assert {f'images/{Path(r.path).name}' for r in test} == want_test
    assert {f'images/{Path(r.path).name}' for r in train} == set(keys) - want_test
    saved = json.loads(split_file.read_text())
    assert set(saved['test']) == want_test and set(saved['train']) == set(keys) - want_test
    assert not [p for p in split_file.parent.iterdir() if p.name != 'split.json']  # no temporary file left
    # Later runs read the file: a changed fraction no longer moves anything, and a new image is placed by hash.
    mtime = split_file.stat().st_mtime_ns
    write_images(root / 'images', [TEST[0]._replace(name='new.png')])
    write_xml(root / 'annotations', [TEST[0]._replace(name='new.png')])
    config.data.test_fraction = 0.9
    again = own_data.read_split(config, 'test')[0]
    new_is_test = bool(_sha1_test_set(['images/new.png'], 0.9))
    assert {f'images/{Path(r.path).name}' for r in again} == want_test | ({'images/new.png'} if new_is_test else set())
    assert split_file.stat().st_mtime_ns == mtime
    # Without a split file (library use) the same split, nothing written.
    config2 = config_for(root, test_fraction=0.3)
    assert len(own_data.read_split(config2, 'test')[0]) == len(want_test | _sha1_test_set(['images/new.png'], 0.3))
    # Tiny sets still get one image each way.
    assert len(own_data.hash_split(['a', 'b'], 1e-9)) == 1 and len(own_data.hash_split(['a', 'b'], 1 - 1e-9)) == 1


def test_photos_config_variants_and_num_classes_from_the_data(tmp_path):
    base = get_config()
    assert (base.model.name, base.model.input_size, base.model.num_classes) == ('yolov3_tiny', 416, 0)
    assert base.train.init_from == 'weights/yolov3-tiny.weights' and base.data.dataset == 'auto'
    for variant, (name, size, init_from) in {
        'smoke': ('yolov3_tiny', 64, ''), 'small': ('yolov3_tiny', 256, ''),
        'quick': ('yolov3_tiny', 256, 'weights/yolov3-tiny.weights'), 'tiny': ('yolov3_tiny', 416,
                                                                              'weights/yolov3-tiny.weights'),
        'yolov4_tiny': ('yolov4_tiny', 416, 'weights/yolov4-tiny.weights'),
        'yolov4,smoke': ('yolov4', 64, ''),
    }.items():
        c = get_config(variant)
        assert (c.model.name, c.model.input_size, c.train.init_from, c.model.num_classes) == (name, size, init_from,
                                                                                                0), variant
    root = write_devkit(tmp_path / 'VOC')
    config = config_for(root)
    run_config.resolve(config, tmp_path / 'run')
    assert config.model.num_classes == 3 and config.data.split_file == str(tmp_path / 'run' / 'split.json')


def _run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1')
    return subprocess.run([sys.executable, '-m', 'yolo_jax.main', '--nojemalloc', *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_cli_trains_on_a_generated_folder_without_a_split_or_a_class_count(tmp_path):
    specs = TRAIN + TEST
    root = tmp_path / 'my photos'  # a space in the user's path
    write_images(root, specs)
    write_xml(root, specs)
    workdir = tmp_path / 'run'
    proc = _run('--config=configs/photos.py:smoke', f'--config.data.root={root}', f'--workdir={workdir}',
                '--config.train.epochs=1')
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert 'Data: VOC XML files' in proc.stderr and 'num_classes=0: 3 classes' in proc.stderr
    saved = json.loads((workdir / 'split.json').read_text())
    assert set(saved['test']) == _sha1_test_set([s.name for s in specs], 0.2)
    assert [p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()]
    records = [json.loads(x) for x in (workdir / 'metrics.jsonl').read_text().splitlines()]
    assert any(r['kind'] == 'train' for r in records) and any(r['kind'] == 'map' for r in records)
    # Eval reads the same split back (a different fraction on the command line changes nothing) and the classes
    # again from the data.
    before = (workdir / 'split.json').read_text()
    proc = _run('--config=configs/photos.py:smoke', f'--config.data.root={root}', f'--workdir={workdir}',
                '--mode=eval', f'--output={tmp_path / "eval"}', '--config.data.test_fraction=0.9')
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
    assert metrics['class_names'] == list(SORTED) and metrics['metrics']['num_images'] == len(saved['test'])
    assert (workdir / 'split.json').read_text() == before
    # The image ids are files: the error pictures too (a one-epoch network misses boxes), listed in the output.
    diag = json.loads((tmp_path / 'eval' / 'diagnostics.json').read_text())
    assert diag['errors']['counts']['missed'] > 0 and 'missed.png' in proc.stdout
    with Image.open(tmp_path / 'eval' / 'missed.png') as picture:
        assert picture.width >= 150 and picture.height >= 180
    # Nothing of the training command repeated: the run's own WORKDIR/config.py and the checkpoint's spec.
    proc = _run(f'--workdir={workdir}', '--mode=eval', f'--output={tmp_path / "eval2"}')
    assert proc.returncode == 0, proc.stderr[-4000:]
    again = json.loads((tmp_path / 'eval2' / 'metrics.json').read_text())
    assert again['metrics'] == metrics['metrics'] and again['class_names'] == list(SORTED)
    # A bad dataset name is one error line naming the formats.
    proc = _run('--config=configs/photos.py:smoke', '--config.data.dataset=pascal', f'--workdir={tmp_path / "x"}')
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith('error: ')]
    assert 'auto, voc_xml, yolo_yaml' in line


@pytest.mark.slow
def test_cli_smoke_training_on_bccd(shared_data, tmp_path):
    root = bccd_root(shared_data)
    workdir = tmp_path / 'bccd'
    proc = _run('--config=configs/photos.py:smoke', f'--config.data.root={root}', f'--workdir={workdir}',
                '--config.train.steps_per_epoch=2', '--config.train.epochs=1')
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert 'Data: 292 train / 72 test examples, 3 classes' in proc.stderr
    assert proc.stderr.count('no area; dropped') == 2
    assert not (workdir / 'split.json').exists()  # BCCD brings its own split
    assert [p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()]
    [final] = [json.loads(x) for x in (workdir / 'metrics.jsonl').read_text().splitlines() if '"map"' in x]
    assert 0.0 <= final['map50'] <= 1.0
    diagnostics = json.loads((workdir / 'diagnostics' / 'diagnostics.json').read_text())  # the final evaluation's
    matrix = np.asarray(diagnostics['confusion_matrix']['counts'])
    assert matrix.shape == (4, 4) and matrix[:, :3].sum() == 945  # every test box: found, confused or missed

    # The loop back to the labelling tool: pre-label 3 photos as VOC XML, read them back as a data set.
    out = tmp_path / 'prelabel'
    proc = _run(f'--workdir={workdir}', '--mode=detect', f'--images={root}/BCCD/JPEGImages/BloodImage_0000[0-2].jpg',
                f'--output={out}', '--save_format=voc_xml', '--config.eval.score_threshold=0.01')
    assert proc.returncode == 0, proc.stderr[-4000:]
    detections = {Path(d['file']).name: d for d in json.loads((out / 'detections.json').read_text())['images']}
    layout = own_data.detect_layout(out / 'voc_xml')
    names = own_data.class_names(layout, str(out / 'voc_xml' / 'classes.txt'))
    assert names == ('Platelets', 'RBC', 'WBC')
    read = {Path(r.path).name: r for r in own_data.read_source(layout.train, names)}
    assert sorted(read) == sorted(detections) and len(read) >= 1
    for name, r in read.items():
        np.testing.assert_allclose(r.boxes, np.reshape(detections[name]['boxes'], (-1, 4)), atol=1.0)

    # Train longer: the finished run, with --workdir alone, to 2 epochs: steps 3-4 follow 1-2.
    proc = _run(f'--workdir={workdir}', '--config.train.epochs=2')
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert 'Extending a finished run of 1 epochs to 2' in proc.stderr
    steps = [json.loads(x)['step'] for x in (workdir / 'metrics.jsonl').read_text().splitlines() if '"train"' in x]
    assert steps == sorted(set(steps)) and steps[-1] == 4
