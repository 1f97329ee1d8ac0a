"""The reference's annotation text format: validation errors name file and line; clipping warns; round trips."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from yolo_jax.data import annotations as ann

W, H = 40, 30


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """tmp/img/a.png (40x30), tmp/img/b c.png (40x30, a space in the name), tmp/classes.txt (3 names)."""
    (tmp_path / 'img').mkdir()
    for name in ('a.png', 'b c.png'):
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / 'img' / name)
    (tmp_path / 'img' / 'broken.png').write_bytes(b'not an image at all')
    (tmp_path / 'classes.txt').write_text('cat\ndog\nbird\n')
    return tmp_path


def _write(folder: Path, *lines: str) -> Path:
    path = folder / 'train.txt'
    path.write_text('\n'.join(lines) + '\n')
    return path


def test_reads_valid_lines(folder):
    absolute = folder / 'img' / 'a.png'
    path = _write(
        folder,
        '# a comment',
        'img/a.png 1,2,10,12,0 5,5,40,30,2',
        '',
        f'{absolute} 0,0,3,3,1',
        'img/b c.png 2,3,4,5,1',
    )
    names = ann.read_class_names(folder / 'classes.txt')
    assert names == ('cat', 'dog', 'bird')
    records = ann.read_annotations(path, names)
    assert [r.line for r in records] == [2, 4, 5]
    assert records[0].path == str(folder / 'img' / 'a.png') and (records[0].width, records[0].height) == (W, H)
    np.testing.assert_array_equal(records[0].boxes, [[1, 2, 10, 12], [5, 5, 40, 30]])
    np.testing.assert_array_equal(records[0].classes, [0, 2])
    assert records[1].path == str(absolute)
    assert records[2].path.endswith('b c.png')
    np.testing.assert_array_equal(records[2].boxes, [[2, 3, 4, 5]])


@pytest.mark.parametrize(
    'bad, message',
    [
        ('img/missing.png 1,1,5,5,0', 'image not found'),
        ('img/broken.png 1,1,5,5,0', 'unreadable image'),
        ('img/a.png 1,1,5.5,5,0', 'non-integer'),
        ('img/a.png 1,1,x,5,0', 'non-integer'),
        ('img/a.png 1,1,5,5', '4 fields'),
        ('img/a.png 1,1,5,5,0,7', '6 fields'),
        ('img/a.png 5,1,5,9,0', 'empty'),
        ('img/a.png 1,9,5,3,0', 'empty'),
        ('img/a.png 1,1,5,5,3', 'class id 3'),
        ('img/a.png 1,1,5,5,-1', 'class id -1'),
        ('img/a.png 1 1 5 5 0', 'comma-separated'),
    ],
)
def test_each_malformed_line_names_file_and_line(folder, bad, message):
    path = _write(folder, 'img/a.png 1,1,5,5,0', bad)
    with pytest.raises(ann.AnnotationError, match=message) as info:
        ann.read_annotations(path, 3)
    assert f'{path}:2:' in str(info.value)
    assert issubclass(ann.AnnotationError, ValueError)


def test_all_bad_lines_are_listed(folder):
    path = _write(folder, 'img/missing.png 1,1,5,5,0', 'img/a.png 1,1,5,5,0', 'img/a.png 1,1,5,5,9')
    with pytest.raises(ann.AnnotationError) as info:
        ann.read_annotations(path, 3)
    text = str(info.value)
    assert '2 bad annotation line(s)' in text and f'{path}:1:' in text and f'{path}:3:' in text


def test_boxes_outside_are_clipped_or_dropped_with_warnings(folder):
    path = _write(
        folder,
        'img/a.png -5,2,10,12,0 30,20,50,35,1',  # both clipped
        'img/a.png 50,0,60,10,0 2,2,4,4,1',  # first lies wholly outside: dropped
        'img/a.png 41,0,45,10,0',  # every box dropped -> image skipped
    )
    with pytest.warns(ann.AnnotationWarning) as caught:
        records = ann.read_annotations(path, 3)
    messages = [str(w.message) for w in caught]
    assert any(f'{path}:1:' in m and 'clipped to 0,2,10,12' in m for m in messages)
    assert any(f'{path}:1:' in m and 'clipped to 30,20,40,30' in m for m in messages)
    assert any(f'{path}:2:' in m and 'dropped' in m for m in messages)
    assert any(f'{path}:3:' in m and 'skipped' in m for m in messages)
    assert len(records) == 2
    np.testing.assert_array_equal(records[0].boxes, [[0, 2, 10, 12], [30, 20, 40, 30]])
    np.testing.assert_array_equal(records[1].boxes, [[2, 2, 4, 4]])
    np.testing.assert_array_equal(records[1].classes, [1])
    with pytest.warns(ann.AnnotationWarning):
        kept = ann.read_annotations(path, 3, keep_empty=True)
    assert len(kept) == 3 and kept[2].boxes.shape == (0, 4)


def test_class_names_file_errors(tmp_path):
    for text, message in [('a\n\nb\n', r':2: blank'), ('a\nb\na\n', r':3: duplicate'), ('\n\n', 'no class names')]:
        path = tmp_path / 'names.txt'
        path.write_text(text)
        with pytest.raises(ann.AnnotationError, match=message):
            ann.read_class_names(path)
    (tmp_path / 'ok.txt').write_text(' x \ny\n\n')
    assert ann.read_class_names(tmp_path / 'ok.txt') == ('x', 'y')
    with pytest.raises(ann.AnnotationError, match='not found'):
        ann.read_class_names(tmp_path / 'nope.txt')


def _examples(n: int = 3):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        k = i + 1
        x1 = rng.integers(0, 30, size=k)
        y1 = rng.integers(0, 20, size=k)
        boxes = np.stack([x1, y1, x1 + rng.integers(1, 10, size=k), y1 + rng.integers(1, 10, size=k)], 1)
        out.append(
            {
                'image': rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8),
                'boxes': boxes.astype(np.float32),
                'classes': rng.integers(0, 3, size=k).astype(np.int32),
            }
        )
    return out


@pytest.mark.parametrize('image_format', ['png', 'jpg'])
def test_export_then_read_round_trip(tmp_path, image_format):
    examples = _examples()
    txt = ann.export_dataset(examples, tmp_path / 'out', ['cat', 'dog', 'bird'], image_format=image_format)
    assert txt == tmp_path / 'out' / 'annotations.txt'
    names = ann.read_class_names(tmp_path / 'out' / 'classes.txt')
    records = ann.read_annotations(txt, names)
    assert len(records) == len(examples)
    for rec, ex in zip(records, examples, strict=True):
        np.testing.assert_array_equal(rec.boxes, ex['boxes'].astype(np.int32))
        np.testing.assert_array_equal(rec.classes, ex['classes'])
        assert Path(rec.path).suffix == f'.{image_format}'
        if image_format == 'png':
            np.testing.assert_array_equal(np.asarray(Image.open(rec.path)), ex['image'])
    # Written paths are relative to the annotation file.
    assert txt.read_text().splitlines()[0].startswith(f'images/000000.{image_format} ')


def test_export_is_atomic(tmp_path):
    out = tmp_path / 'out'
    ann.export_dataset(_examples(1), out, ['a', 'b', 'c'])
    with pytest.raises(FileExistsError):
        ann.export_dataset(_examples(1), out, ['a', 'b', 'c'])

    def failing():
        yield from _examples(2)
        raise RuntimeError('interrupted')

    with pytest.raises(RuntimeError, match='interrupted'):
        ann.export_dataset(failing(), tmp_path / 'half', ['a', 'b', 'c'])
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out']  # nothing half-written, no temp folder left
    ann.export_dataset(_examples(3), out, ['a', 'b', 'c'], overwrite=True)
    assert len(ann.read_annotations(out / 'annotations.txt', 3)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out']


def test_format_line_and_atomic_text(tmp_path):
    assert ann.format_line('x.png', np.array([[1.4, 2.6, 3, 4]]), np.array([2])) == 'x.png 1,3,3,4,2'
    with pytest.raises(ValueError, match='read back'):
        ann.format_line('a b,c.png', np.zeros((0, 4)), np.zeros((0,)))
    ann.write_text_atomic(tmp_path / 'f.txt', 'hello\n')
    assert (tmp_path / 'f.txt').read_text() == 'hello\n'
    assert [p.name for p in tmp_path.iterdir()] == ['f.txt']
