"""The data set health report (yolo_jax/data/check.py) on generated sets with planted problems: each problem found
where it was planted, nothing else flagged; anchor coverage against hand-computed cases; the command line."""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs.mnist import get_config
from yolo_jax.data import check

REPO = Path(__file__).resolve().parents[1]
NAMES = ('cat', 'dog', 'bird')


def _picture(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A smooth random picture (a 6 x 5 random colour grid, upsampled): distinct seeds give unrelated pictures."""
    grid = np.random.default_rng(seed).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize(size, Image.Resampling.BICUBIC)


def _write_set(root: Path) -> dict:
    """An annotations-format set with planted problems; returns what was planted (where = file:line)."""
    img = root / 'images'
    img.mkdir(parents=True)
    for k in range(6):
        _picture(k).save(img / f'a{k}.png')
    for k in range(3):
        _picture(100 + k).save(img / f'b{k}.png')
    _picture(300).save(img / 'c0.png')
    shutil.copyfile(img / 'a1.png', img / 'b_copy.png')  # exact duplicate across splits (a leak)
    shutil.copyfile(img / 'a3.png', img / 'a3_copy.png')  # exact duplicate within train
    buf = io.BytesIO()
    _picture(2).resize((120, 90), Image.Resampling.BILINEAR).save(buf, 'JPEG', quality=80)
    (img / 'b_near.jpg').write_bytes(buf.getvalue())  # near duplicate of a2 across splits (resized, re-encoded)
    buf = io.BytesIO()
    _picture(200).save(buf, 'JPEG', quality=90)
    (img / 'b_trunc.jpg').write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])  # header fine, pixels cut off
    (img / 'garbage.png').write_bytes(b'not an image at all')
    train = [
        'images/a0.png 10,10,50,50,0 30,30,30,60,1 200,10,260,50,2',  # 1: box 2 degenerate, box 3 outside (160 wide)
        'images/a1.png 10,10,60,60,1',  # 2
        'images/a2.png 5,5,100,100,2',  # 3
        'images/a3.png 20,20,80,80,0',  # 4
        'images/a4.png 100,20,165,60,1 10,10,40,40,0 10,10,40,40,0',  # 5: box 1 partly outside, box 3 = box 2
        # 6: IoU 0.95 but other classes; IoU 0.81 same class; class 7 unknown: only the last is a problem
        'images/a5.png 10,10,50,50,0 10,10,50,52,1 60,10,100,50,2 60,10,100,41,2 5,60,30,90,7',
        'images/a3_copy.png 20,20,80,80,0',  # 7
        'images/missing.png 1,1,5,5,0',  # 8
        'images/garbage.png 1,1,5,5,0',  # 9
        'images/b2.png 5,5,20,20,1 1,2,3,cls',  # 10: box 2 does not parse
        'images/c0.png',  # 11: no boxes
    ]
    test = [
        'images/b0.png 10,10,40,40,0',  # 1
        'images/b1.png 10,10,40,40,1 50,50,90,90,2',  # 2
        'images/b_copy.png 10,10,60,60,1',  # 3
        'images/b_near.jpg 4,4,75,75,2',  # 4
        'images/b_trunc.jpg 10,10,40,40,0',  # 5
    ]
    (root / 'train.txt').write_text('\n'.join(train) + '\n')
    (root / 'test.txt').write_text('\n'.join(test) + '\n')
    (root / 'classes.txt').write_text('\n'.join(NAMES) + '\n')
    tr, te = root / 'train.txt', root / 'test.txt'
    return {
        'issues': {
            ('train', 'degenerate_box', f'{tr}:1 box 2'), ('train', 'outside_box', f'{tr}:1 box 3'),
            ('train', 'partly_outside_box', f'{tr}:5 box 1'), ('train', 'duplicate_box', f'{tr}:5 box 3'),
            ('train', 'unknown_class', f'{tr}:6 box 5'), ('train', 'missing_image', f'{tr}:8'),
            ('train', 'unreadable_image', f'{tr}:9'), ('train', 'bad_entry', f'{tr}:10'),
            ('test', 'unreadable_image', f'{te}:5'),
        },
        # (split, file name) pairs, sorted
        'exact': {(('test', 'b_copy.png'), ('train', 'a1.png')), (('train', 'a3.png'), ('train', 'a3_copy.png'))},
        'near': {(('test', 'b_near.jpg'), ('train', 'a2.png'))},
    }


def _config(root: Path, *variant: str):
    config = get_config(','.join(('tiny',) + variant))
    config.model.num_classes = len(NAMES)
    config.data.dataset = 'annotations'
    config.data.train_annotations = str(root / 'train.txt')
    config.data.test_annotations = str(root / 'test.txt')
    config.data.class_names = str(root / 'classes.txt')
    return config


def _found(report: dict) -> dict:
    issues = {(s, i['kind'], i['where']) for s, split in report['splits'].items()
              for items in split['issues'].values() for i in items}

    def names(group: dict) -> tuple:
        return tuple(sorted((m['split'], Path(m['image']).name) for m in group['images']))

    dup = report['duplicates']
    return {'issues': issues, 'exact': {names(g) for g in dup['exact']}, 'near': {names(p) for p in dup['near']}}


def test_planted_problems_found_exactly(tmp_path):
    planted = _write_set(tmp_path)
    report = check.check_data(_config(tmp_path))
    assert _found(report) == planted
    dup = report['duplicates']
    assert dup['leaks'] == 2 and [g['across_splits'] for g in dup['near']] == [True]
    assert dup['near'][0]['hamming'] <= check.NEAR_HASH_BITS and dup['near'][0]['correlation'] >= 0.98
    train, test = report['splits']['train'], report['splits']['test']
    # Records: every line with a readable header (train: 11 lines - missing - garbage; a0 twice).
    assert (train['images'], test['images']) == (9, 5)
    assert [Path(p).name for p in train['images_without_boxes']] == ['c0.png']
    # Per class, counted from the lines above by hand (every box with a known class, problems included).
    assert train['classes'] == {'cat': {'images': 5, 'instances': 6}, 'dog': {'images': 5, 'instances': 5},
                                'bird': {'images': 3, 'instances': 4}}
    assert test['classes'] == {'cat': {'images': 2, 'instances': 2}, 'dog': {'images': 2, 'instances': 2},
                               'bird': {'images': 2, 'instances': 2}}
    line = check.summary_line(report)
    assert line.startswith('data check: train 9 images / 16 boxes; test 5 images / 6 boxes;')
    assert ('; 1 degenerate_box' not in line and 'no problems' not in line
            and 'duplicate images: 2 exact groups, 1 near pairs, 2 across splits' in line)


def test_clean_distinct_pictures_flag_nothing(tmp_path):
    """Control: 40 unrelated pictures, some resized/re-encoded to other sizes, give no duplicate and no problem."""
    img = tmp_path / 'images'
    img.mkdir()
    lines = []
    for k in range(40):
        pic = _picture(1000 + k, (160 + 8 * (k % 5), 120))
        pic.save(img / f'p{k}.jpg', quality=70 + k % 20)
        lines.append(f'images/p{k}.jpg 10,10,{40 + k},{50 + k % 7},{k % 3}')
    (tmp_path / 'train.txt').write_text('\n'.join(lines[:30]) + '\n')
    (tmp_path / 'test.txt').write_text('\n'.join(lines[30:]) + '\n')
    (tmp_path / 'classes.txt').write_text('\n'.join(NAMES) + '\n')
    report = check.check_data(_config(tmp_path))
    assert _found(report) == {'issues': set(), 'exact': set(), 'near': set()}


def test_phash_and_correlation_basics():
    thumb = np.asarray(_picture(5).convert('L').resize((32, 32)), np.uint8)
    assert check.phash(thumb) == check.phash(thumb.copy())
    assert bin(check.phash(thumb) ^ check.phash(255 - thumb)).count('1') >= 60  # inverted: (almost) every bit
    assert check.thumb_correlation(thumb, thumb) == pytest.approx(1.0)
    assert check.thumb_correlation(thumb, 255 - thumb) == pytest.approx(-1.0)
    flat = np.full((32, 32), 200, np.uint8)
    assert check.thumb_correlation(flat, flat) == 1.0 and check.thumb_correlation(flat, thumb) == 0.0
    # DCT matrix: orthonormal, and its first row the mean.
    c = check.dct_matrix(8)
    np.testing.assert_allclose(c @ c.T, np.eye(8), atol=1e-12)
    hashes = np.array([0, 0b111, 2**64 - 1, 0b1], np.uint64)
    assert check.hash_pairs(hashes, 3, block=2) == [(0, 1, 3), (0, 3, 1), (1, 3, 2)]


def test_anchor_coverage_hand_computed():
    """Boxes in a 832 x 416 image letterboxed to 416 (scale 0.5): (20, 20), (80, 20), (200, 200) px become 10x10,
    40x10 and 100x100 input pixels. Anchors 10x10 and 50x50: 10x10 fits the first (ratio 1); 40x10 has ratios
    (4, 1) and (0.8, 0.2) -> worst sides 4 and 5, not < 4: not covered; 100x100 fits 50x50 (ratio 2). Recall 2/3.
    Best IoUs: 1; max(40*10 / (400+100-100), 400 / (400+2500-400)) = max(0.25, 0.16) = 0.25; 2500 / 10000 = 0.25:
    mean 0.5."""
    from yolo_jax.data.annotations import AnnotationRecord

    record = AnnotationRecord(path='x', boxes=np.array([[0, 0, 20, 20], [100, 100, 180, 120], [400, 0, 600, 200]],
                                                      np.float64), classes=np.array([0, 1, 2]), width=832,
                              height=416, line=1, image_format='PNG')
    wh = check.input_box_sizes([record], 3, 416, 'letterbox')
    np.testing.assert_allclose(wh, [[10, 10], [40, 10], [100, 100]])
    got = check.anchor_coverage(wh, (((10, 10),), ((50, 50),)))
    assert got['num_boxes'] == 3
    assert got['best_possible_recall'] == pytest.approx(2 / 3)
    assert got['mean_best_iou'] == pytest.approx(0.5)
    # Just inside the threshold: ratio 3.99 is covered.
    assert check.best_possible_recall(np.array([[39.9, 10]]), np.array([[10, 10]])) == 1.0
    assert np.isnan(check.best_possible_recall(np.zeros((0, 2)), np.array([[10, 10]])))


def test_coco_json_problems(tmp_path):
    """COCO JSON: unknown category, bbox outside, a box of a missing image (reported once, as the image)."""
    _picture(1).save(tmp_path / 'x.png')
    _picture(2).save(tmp_path / 'y.png')
    data = {
        'images': [{'id': 1, 'file_name': 'x.png', 'width': 160, 'height': 120},
                   {'id': 2, 'file_name': 'y.png', 'width': 160, 'height': 120},
                   {'id': 3, 'file_name': 'gone.png', 'width': 10, 'height': 10}],
        'categories': [{'id': 5, 'name': 'cat'}, {'id': 9, 'name': 'dog'}],
        'annotations': [{'id': 1, 'image_id': 1, 'category_id': 5, 'bbox': [10, 10, 20, 20]},
                        {'id': 2, 'image_id': 1, 'category_id': 7, 'bbox': [50, 10, 20, 20]},
                        {'id': 3, 'image_id': 2, 'category_id': 9, 'bbox': [170, 10, 20, 20]},
                        {'id': 4, 'image_id': 3, 'category_id': 9, 'bbox': [1, 1, 2, 2]},
                        {'id': 5, 'image_id': 2, 'category_id': 9, 'bbox': [1, 1, 'w', 2]}],
    }
    path = tmp_path / 'a.json'
    path.write_text(json.dumps(data))
    records, names = check.read_coco_json_raw(path, None, 'train')
    assert names == ('cat', 'dog')
    issues = list(records.issues)
    for r, bw in zip(records.records, records.box_where, strict=True):
        issues += check.box_issues(r, bw, len(names), 'train')
    assert sorted((i['kind'], i['where']) for i in issues) == [
        ('bad_entry', f'{path}: annotation id 5'),
        ('missing_image', f'{path}: image id 3'),
        ('outside_box', f'{path}: annotation id 3'),
        ('unknown_class', f'{path}: annotation id 2 (category_id 7)'),
    ]


def test_check_at_start_warns_about_a_leak(tmp_path, caplog):
    """The run's start check on its own decoded splits: the summary line, and a warning for a test image that is
    also a training image."""
    from yolo_jax.input_pipeline import Data

    img = tmp_path / 'images'
    img.mkdir()
    for k in range(4):
        _picture(k).save(img / f'p{k}.png')
    shutil.copyfile(img / 'p0.png', img / 'leak.png')
    (tmp_path / 'train.txt').write_text(''.join(f'images/p{k}.png 10,10,50,50,{k % 3}\n' for k in range(3)))
    (tmp_path / 'test.txt').write_text('images/p3.png 10,10,50,50,0\nimages/leak.png 10,10,50,50,0\n')
    (tmp_path / 'classes.txt').write_text('\n'.join(NAMES) + '\n')
    config = _config(tmp_path, 'smoke')
    lines = []
    with caplog.at_level(logging.WARNING):
        report = check.check_at_start(config, Data(config), log=lines.append)
    assert len(lines) == 1 and lines[0].startswith('data check: train 3 images / 3 boxes; test 2 images / 2 boxes; '
                                                   'no problems; duplicate images: 1 exact groups, 0 near pairs, '
                                                   '1 across splits')
    assert report['duplicates']['leaks'] == 1
    assert 'leak' in caplog.text and 'p0.png' in caplog.text and 'leak.png' in caplog.text


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'yolo_jax.data.check', *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_command_line(tmp_path):
    planted = _write_set(tmp_path / 'set')
    flags = [f'--config={REPO}/configs/mnist.py:tiny', '--config.data.dataset=annotations',
             f'--config.data.train_annotations={tmp_path}/set/train.txt',
             f'--config.data.test_annotations={tmp_path}/set/test.txt',
             f'--config.data.class_names={tmp_path}/set/classes.txt']
    out = tmp_path / 'out'
    done = _cli(*flags, f'--output={out}')
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'duplicate images: 2 exact groups, 1 near pairs; 2 across splits' in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ['aspect_ratios.png', 'box_sizes.png', 'classes.png',
                                                     'report.json']
    for name in ('aspect_ratios.png', 'box_sizes.png', 'classes.png'):
        with Image.open(out / name) as im:
            assert im.format == 'PNG' and im.width > 100
    report = json.loads((out / 'report.json').read_text())
    assert _found(report) == planted
    hist = report['splits']['train']['box_size_histogram']
    assert sum(hist['counts']) == report['splits']['train']['anchor_coverage']['num_boxes'] == 13

    bad = _cli(*flags, '--outptu=x')
    assert bad.returncode == 2
    errors = [ln for ln in bad.stderr.splitlines() if ln.startswith('error:')]
    assert len(errors) == 1 and 'outptu' in errors[0] and 'Traceback' not in bad.stderr

    no_config = _cli('--config=configs/nope.py')
    assert no_config.returncode == 2
    assert no_config.stderr.strip().splitlines() == [
        'error: --config=configs/nope.py: no such file configs/nope.py']

    missing = _cli(*flags[:2], f'--config.data.train_annotations={tmp_path}/nope.txt',
                   f'--config.data.test_annotations={tmp_path}/set/test.txt',
                   f'--config.data.class_names={tmp_path}/set/classes.txt')
    assert missing.returncode == 2
    errors = [ln for ln in missing.stderr.splitlines() if ln.startswith('error:')]
    assert len(errors) == 1 and 'nope.txt' in errors[0] and 'Traceback' not in missing.stderr


def test_yolo_txt_problems(tmp_path):
    """YOLO labels: unknown class, partly outside, degenerate and unparseable lines, each at its label line."""
    (tmp_path / 'images' / 'train').mkdir(parents=True)
    (tmp_path / 'labels' / 'train').mkdir(parents=True)
    _picture(1).save(tmp_path / 'images' / 'train' / 'x.png')  # 160 x 120
    _picture(2).save(tmp_path / 'images' / 'train' / 'y.png')  # no label file: an image without boxes
    label = tmp_path / 'labels' / 'train' / 'x.txt'
    label.write_text('0 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.1 0.1\n1 0.95 0.5 0.2 0.2\ngarbage line\n\n1 0.5 0.5 0 0.1\n')
    read = check.read_yolo_txt_raw(tmp_path / 'images' / 'train', 'train')
    issues = list(read.issues)
    for r, bw in zip(read.records, read.box_where, strict=True):
        issues += check.box_issues(r, bw, 3, 'train')
    assert sorted((i['kind'], i['where']) for i in issues) == [
        ('bad_entry', f'{label}:4'), ('degenerate_box', f'{label}:6'), ('partly_outside_box', f'{label}:3'),
        ('unknown_class', f'{label}:2')]
    np.testing.assert_allclose(read.records[0].boxes[2], [136, 48, 168, 72])  # 152 -+ 16, 60 -+ 12: unclipped
    assert [len(r.classes) for r in read.records] == [4, 0]


def test_bad_split_name_is_a_user_error(tmp_path):
    _write_set(tmp_path)
    with pytest.raises(check.errors.ConfigError, match="--splits: 'validation' is not one of"):
        check.check_data(_config(tmp_path), ('validation',))


def test_read_strict_collects_a_strict_readers_errors_and_warnings(tmp_path):
    """The wrapper for formats without a lenient reader: errors and warnings of annotations.read_annotations."""
    from yolo_jax.data import annotations as ann

    _picture(1).save(tmp_path / 'x.png')  # 160 x 120
    path = tmp_path / 'a.txt'
    path.write_text('x.png 10,10,50,50,0 150,10,170,50,1\nx.png 10,10,10,50,0\nnope.png 1,1,2,2,0\n')
    read = check.read_strict(lambda: ann.read_annotations(path, NAMES), 'train')
    assert read.records == []
    assert sorted((i['kind'], i['where']) for i in read.issues) == [
        ('bad_entry', f'{path}:2'), ('bad_entry', f'{path}:3'), ('reader_warning', f'{path}:1')]
    path.write_text('x.png 10,10,50,50,0 150,10,170,50,1\n')
    read = check.read_strict(lambda: ann.read_annotations(path, NAMES), 'train')
    assert [i['kind'] for i in read.issues] == ['reader_warning'] and 'clipped' in read.issues[0]['detail']
    np.testing.assert_array_equal(read.records[0].boxes, [[10, 10, 50, 50], [150, 10, 160, 50]])


def _labelled(path: str, classes: list[int]):
    from yolo_jax.data.annotations import AnnotationRecord

    boxes = np.tile(np.array([[0.0, 0.0, 10.0, 10.0]]), (len(classes), 1))
    return AnnotationRecord(path=path, boxes=boxes, classes=np.asarray(classes, np.int64), width=100, height=100,
                            line=1, image_format='PNG')


def test_images_without_a_common_class_are_listed():
    """20 labelled images (and one without boxes, not counted): cat in 19 of them (95% >= 90%), so the one without
    it is listed; dog in 5 (25%): not common; bird in all 20: none missing. At the edge: 18 of 20 (90%) is common,
    17 of 20 is not."""
    records = [_labelled(f'im{i}', [2] + ([0] if i != 7 else []) + ([1] if i < 5 else [])) for i in range(20)]
    records.append(_labelled('empty', []))
    assert check.missing_common_classes(records, NAMES) == {'cat': {'share': 0.95, 'images': ['im7']}}
    edge = [_labelled(f'im{i}', [0] if i >= 2 else [1]) for i in range(20)]
    assert check.missing_common_classes(edge, NAMES) == {'cat': {'share': 0.9, 'images': ['im0', 'im1']}}
    below = [_labelled(f'im{i}', [0] if i >= 3 else [1]) for i in range(20)]  # 17 of 20 (85%)
    assert check.missing_common_classes(below, NAMES) == {}
    # The run's one-line log names them.
    split = {'images': 21, 'instances': 45, 'issues': {}, 'anchor_coverage': {'best_possible_recall': 1.0,
                                                                               'mean_best_iou': 1.0},
             'missing_common_class': check.missing_common_classes(records, NAMES)}
    assert check.summary_line({'splits': {'train': split}}).endswith(
        '; possibly half labelled (1 train images without cat, a class in >= 90% of them); anchors: best-possible '
        'recall 1.000, mean best IoU 1.000')


def test_bccd_photos_without_a_common_class_are_listed(shared_data, tmp_path):
    """BCCD through the command: per split, the classes in >= 90% of the labelled photos and the photos without
    them, counted here from the XML files, are what the report lists (red cells: 12 trainval and 3 test photos
    with none labelled), and the summary says so."""
    import xml.etree.ElementTree as ET

    devkit = shared_data / 'bccd' / 'BCCD'
    if not (devkit / 'Annotations').is_dir():
        pytest.skip(f'BCCD not found under {devkit.parent}')

    def oracle(split: str) -> dict[str, set[str]]:
        names = (devkit / 'ImageSets' / 'Main' / f'{split}.txt').read_text().split()
        trees = {n: ET.parse(devkit / 'Annotations' / f'{n}.xml') for n in names}
        labels = {n: {o.findtext('name').strip() for o in tree.iter('object')} for n, tree in trees.items()}
        labels = {n: c for n, c in labels.items() if c}
        out = {}
        for cls in ('Platelets', 'RBC', 'WBC'):
            without = {n for n, c in labels.items() if cls not in c}
            if 0 < len(without) <= 0.1 * len(labels):
                out[cls] = without
        return out

    expect = {'train': oracle('trainval'), 'test': oracle('test')}
    assert (len(expect['train']['RBC']), len(expect['test']['RBC'])) == (12, 3)
    out = tmp_path / 'report'
    done = _cli(f'--config={REPO}/configs/photos.py', f'--config.data.root={devkit.parent}', f'--output={out}')
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / 'report.json').read_text())
    for split, classes in expect.items():
        missing = report['splits'][split]['missing_common_class']
        assert {c: {Path(p).stem for p in m['images']} for c, m in missing.items()} == classes
    assert 'possibly half labelled: 12 images with boxes have no RBC' in done.stdout
    assert 'possibly half labelled: 3 images with boxes have no RBC' in done.stdout
