"""Detections written as labelled sets (data/export_labels.py, `--mode=detect --save_format=...`), read back by the
project's own readers through the own-data layout detection (data/own_data.py, as `configs/photos.py
--config.data.root=SET` reads them): the same images, sizes, classes and boxes within each format's rounding.

Tolerances: VOC corners are integers (rounded half up, xmin/ymin at least 1), so a corner comes back within 0.5 px,
1 px at the left/top border (0 is written as 1); YOLO values have 8 decimals and COCO full floats, and the readers
keep float32 boxes, so both come back within 1e-3 px (float32 spacing is 1e-5 px at 100 px)."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from yolo_jax import errors
from yolo_jax.data import export_labels, own_data

NAMES = ('cell', 'platelet', 'rbc')
KINDS = {'voc_xml': 'VOC devkit', 'yolo_txt': 'YOLO txt folder with a names file', 'coco_json': 'COCO JSON file'}
ATOL = {'voc_xml': 0.5, 'yolo_txt': 1e-3, 'coco_json': 1e-3}


def _entries(tmp: Path) -> list[dict]:
    """Image entries as detect.py writes them: three images (a wide RGB PNG, a tall greyscale JPEG, an RGB PNG in
    another folder with the same stem, so detect named its drawing a_1.png) with hand-made fractional boxes; the
    greyscale one has none."""
    (tmp / 'in' / 'sub').mkdir(parents=True)
    Image.new('RGB', (90, 40), (10, 200, 30)).save(tmp / 'in' / 'a.png')
    Image.new('L', (50, 100), 128).save(tmp / 'in' / 'b.jpg')
    Image.new('RGB', (64, 48), (1, 2, 3)).save(tmp / 'in' / 'sub' / 'a.png')

    def entry(file: str, output: str, w: int, h: int, boxes, classes, scores) -> dict:
        return {'file': str(tmp / 'in' / file), 'output': str(tmp / 'out' / output), 'width': w, 'height': h,
                'boxes': boxes, 'classes': classes, 'scores': scores, 'class_names': [NAMES[c] for c in classes]}

    return [
        entry('a.png', 'a.png', 90, 40, [[10.3, 5.6, 40.49, 30.51], [0.0, 0.2, 12.7, 39.0]], [2, 0], [0.9, 0.41]),
        entry('b.jpg', 'b.png', 50, 100, [], [], []),
        entry('sub/a.png', 'a_1.png', 64, 48, [[33.25, 12.75, 63.0, 47.0]], [1], [0.55]),
    ]


def _read_back(folder: Path, fmt: str, expected_names: tuple[str, ...] = NAMES) -> dict[str, tuple]:
    """{image file name: (width, height, boxes, classes)} read through own_data's layout detection and reader;
    the set's class names must be `expected_names` (VOC: from its classes.txt, as config.data.class_names)."""
    layout = own_data.detect_layout(folder)
    assert layout.kind == KINDS[fmt], layout
    names = own_data.class_names(layout, str(folder / 'classes.txt') if fmt == 'voc_xml' else '')
    assert names == expected_names
    return {Path(r.path).name: (r.width, r.height, r.boxes, r.classes.tolist())
            for r in own_data.read_source(layout.train, names)}


@pytest.mark.parametrize('fmt', export_labels.FORMATS)
def test_round_trip_through_the_own_readers(fmt, tmp_path):
    entries = _entries(tmp_path)
    (tmp_path / 'out').mkdir()
    folder = export_labels.write_label_set(fmt, entries, NAMES, tmp_path / 'out')
    assert folder == tmp_path / 'out' / fmt
    assert [p.name for p in (tmp_path / 'out').iterdir()] == [fmt]  # no temporary folder left
    got = _read_back(folder, fmt)
    assert sorted(got) == ['a.png', 'a_1.png', 'b.jpg']
    for e in entries:
        name = Path(e['output']).stem + Path(e['file']).suffix
        width, height, boxes, classes = got[name]
        assert (width, height) == (e['width'], e['height'])
        assert classes == e['classes']
        atol = np.full((len(e['boxes']), 4), ATOL[fmt])
        if fmt == 'voc_xml' and len(e['boxes']):
            atol[np.asarray(e['boxes']) < 0.5] = 1.0  # 0 becomes VOC's first pixel, 1
        np.testing.assert_array_less(np.abs(boxes - np.reshape(e['boxes'], (-1, 4))), atol + 1e-9)
    # The images are the originals (linked or copied), pixel for pixel.
    image_dir = {'voc_xml': 'JPEGImages'}.get(fmt, 'images')
    assert (folder / image_dir / 'a_1.png').read_bytes() == (tmp_path / 'in' / 'sub' / 'a.png').read_bytes()


def test_voc_xml_as_labelimg_writes_it(tmp_path):
    """Integer corners by hand (half up; 0 → 1), depth from the image, pose / truncated / difficult, an image
    without detections has no <object>."""
    (tmp_path / 'out').mkdir()
    folder = export_labels.write_label_set('voc_xml', _entries(tmp_path), NAMES, tmp_path / 'out')
    root = ET.parse(folder / 'Annotations' / 'a.xml').getroot()
    assert root.findtext('filename') == 'a.png' and root.findtext('folder') == 'JPEGImages'
    assert [root.findtext(f'size/{t}') for t in ('width', 'height', 'depth')] == ['90', '40', '3']
    objects = root.findall('object')
    assert [o.findtext('name') for o in objects] == ['rbc', 'cell']
    assert [[int(o.findtext(f'bndbox/{t}')) for t in ('xmin', 'ymin', 'xmax', 'ymax')] for o in objects] == [
        [10, 6, 40, 31], [1, 1, 13, 39]]
    assert {(o.findtext('pose'), o.findtext('truncated'), o.findtext('difficult')) for o in objects} == {
        ('Unspecified', '0', '0')}
    grey = ET.parse(folder / 'Annotations' / 'b.xml').getroot()
    assert grey.findtext('size/depth') == '1' and grey.findall('object') == []
    assert (folder / 'classes.txt').read_text() == 'cell\nplatelet\nrbc\n'


def test_voc_corners():
    """Half up; at least 1 and at most the size; a box under 1 px is widened to 1 px inside the image."""
    assert export_labels.voc_corners([2.5, 3.49, 7.5, 9.51], 20, 20) == (3, 3, 8, 10)
    assert export_labels.voc_corners([0.0, 0.4, 19.9, 20.0], 20, 20) == (1, 1, 20, 20)
    assert export_labels.voc_corners([5.1, 5.2, 5.3, 5.4], 20, 20) == (5, 5, 6, 6)
    assert export_labels.voc_corners([19.6, 19.7, 19.8, 19.9], 20, 20) == (19, 19, 20, 20)


def test_boxes_clipped_and_empty_ones_left_out(tmp_path):
    """A box over the border is clipped to the image, one with no area is not written (all three formats read
    it back the same way)."""
    entries = _entries(tmp_path)
    entries[2] = {**entries[2], 'boxes': [[-3.0, 40.0, 70.0, 60.0], [10.0, 10.0, 10.0, 20.0]], 'classes': [1, 2],
                  'scores': [0.5, 0.4]}
    (tmp_path / 'out').mkdir()
    for fmt in export_labels.FORMATS:
        got = _read_back(export_labels.write_label_set(fmt, entries, NAMES, tmp_path / 'out'), fmt)
        _, _, boxes, classes = got['a_1.png']
        assert classes == [1]
        expected = [1.0, 40.0, 64.0, 48.0] if fmt == 'voc_xml' else [0.0, 40.0, 64.0, 48.0]
        np.testing.assert_allclose(boxes[0], expected, atol=1e-3)


def test_coco_keeps_the_scores(tmp_path):
    entries = _entries(tmp_path)
    (tmp_path / 'out').mkdir()
    folder = export_labels.write_label_set('coco_json', entries, NAMES, tmp_path / 'out')
    data = json.loads((folder / 'annotations.json').read_text())
    assert [a['score'] for a in data['annotations']] == [0.9, 0.41, 0.55]
    assert [c['name'] for c in data['categories']] == list(NAMES)
    assert [a['bbox'] for a in data['annotations']][0] == pytest.approx([10.3, 5.6, 30.19, 24.91])


def test_an_existing_set_is_never_replaced(tmp_path):
    (tmp_path / 'out' / 'yolo_txt').mkdir(parents=True)
    (tmp_path / 'out' / 'yolo_txt' / 'mine.txt').write_text('corrected\n')
    with pytest.raises(errors.OutputExistsError, match='yolo_txt already exists'):
        export_labels.write_label_set('yolo_txt', _entries(tmp_path), NAMES, tmp_path / 'out')
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['yolo_txt']
    assert (tmp_path / 'out' / 'yolo_txt' / 'mine.txt').read_text() == 'corrected\n'


def test_the_flag_lists_the_formats():
    from absl import flags

    from yolo_jax import main  # noqa: F401  (defines the flags)

    assert tuple(flags.FLAGS['save_format'].parser.enum_values) == export_labels.FORMATS


# ---------------------------------------------------------------------------------------------- the real command


def _main(*args: str) -> subprocess.CompletedProcess:
    from test_cli import run

    return run('main', ['--config=configs/mnist.py:tiny,smoke', '--mode=detect', *args])


@pytest.mark.slow  # three detect runs of the smoke model (~20 s each on 2 cores)
def test_detect_save_format_end_to_end(tmp_path):
    """`main --mode=detect --save_format=X` on a random smoke checkpoint (threshold lowered so that it finds
    boxes): exit 0, every image of detections.json read back from OUTPUT/X by the own readers with its boxes and
    classes; a second run into the same output is one error line and leaves the set as it was."""
    from test_detect import make_workdir, small_config, write_images

    workdir = make_workdir(tmp_path / 'workdir', small_config())
    write_images(tmp_path / 'images')
    settings = [f'--workdir={workdir}', f'--images={tmp_path / "images"}', '--config.eval.score_threshold=0.05',
                '--config.eval.max_detections=20', '--config.train.eval_batch_size=2']
    for fmt in export_labels.FORMATS:
        out = tmp_path / f'out_{fmt}'
        proc = _main(*settings, f'--output={out}', f'--save_format={fmt}')
        assert proc.returncode == 0, proc.stderr[-3000:]
        detections = json.loads((out / 'detections.json').read_text())['images']
        assert sum(len(d['boxes']) for d in detections) > 0
        got = _read_back(out / fmt, fmt, tuple(str(k) for k in range(10)))  # MNIST's
        assert sorted(got) == sorted(Path(d['file']).name for d in detections)
        for d in detections:
            width, height, boxes, classes = got[Path(d['file']).name]
            assert (width, height) == (d['width'], d['height'])
            assert classes == d['classes']
            atol = np.full((len(d['boxes']), 4), ATOL[fmt])
            if fmt == 'voc_xml' and len(d['boxes']):
                atol[np.asarray(d['boxes']) < 0.5] = 1.0
            np.testing.assert_array_less(np.abs(boxes - np.reshape(d['boxes'], (-1, 4))), atol + 1e-6)
    again = _main(*settings, f'--output={tmp_path / "out_coco_json"}', '--save_format=coco_json')
    _assert_one_error(again, 'coco_json already exists')
    assert json.loads((tmp_path / 'out_coco_json' / 'coco_json' / 'annotations.json').read_text())['annotations']


def _assert_one_error(proc: subprocess.CompletedProcess, expect: str) -> None:
    assert proc.returncode == errors.EXIT_CODE, f'exit code {proc.returncode}\n{proc.stderr[-3000:]}'
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('error:')]
    assert len(lines) == 1 and expect in lines[0], proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize('args, expect', [
    (['--save_format=pascal'], '--save_format'),
    (['--video=clip.mp4', '--save_format=voc_xml'], 'not for a video'),
    (['--save_format=yolo_txt', '--mode=eval'], '--save_format=yolo_txt is for --mode=detect'),
], ids=['bad value', 'with a video', 'outside detect'])
def test_save_format_mistakes_are_one_error_line(args, expect, tmp_path):
    from test_cli import _empty_workdir

    _assert_one_error(_main(f'--workdir={_empty_workdir(tmp_path)}', '--images=x.png', *args), expect)
