"""Digit sources: sklearn, folders/zips of <label>_<id> images, IDX files, TFDS mnist (mocked), source resolution."""

import gzip
import hashlib
import io
import socket
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from yolo_jax.data import digits


def _digit(label: int, seed: int) -> np.ndarray:
    """A black-on-white 28x28 image: white border, some dark pixels inside."""
    rng = np.random.default_rng(seed)
    img = np.full((28, 28), 255, np.uint8)
    img[6:22, 8:20] = rng.integers(0, 200, size=(16, 12), dtype=np.uint8)
    img[0, 0] = label  # makes every file distinguishable
    return img


def _png_bytes(img: np.ndarray, fmt: str = 'PNG') -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


def _write_zip(path: Path, members: dict[str, np.ndarray]) -> None:
    with zipfile.ZipFile(path, 'w') as z:
        for name, img in members.items():
            z.writestr(name, _png_bytes(img, 'PPM' if name.endswith('.pgm') else 'PNG'))


def test_resize_matches_tensorflow_bilinear_half_pixel():
    tf = pytest.importorskip('tensorflow')
    rng = np.random.default_rng(0)
    for (h, w), side in [((8, 8), 20), ((28, 28), 14), ((28, 28), 22), ((28, 28), 112), ((28, 28), 42)]:
        img = rng.uniform(0, 255, size=(h, w)).astype(np.float32)
        want = tf.image.resize(img[..., None], (side, side), method='bilinear', antialias=False).numpy()[..., 0]
        np.testing.assert_allclose(digits.resize_bilinear(img, side, side), want, atol=1e-3)


def test_sklearn_digits_look_like_inverted_mnist_and_split_deterministically():
    from sklearn.datasets import load_digits as sk_load

    train, test = digits.sklearn_digits('train'), digits.sklearn_digits('test')
    total = len(sk_load().target)
    assert len(train) + len(test) == total and len(test) == total * 20 // 100
    for d in (train, test):
        assert d.images.shape[1:] == (28, 28) and d.images.dtype == np.uint8 and d.labels.dtype == np.int32
        assert set(np.unique(d.labels)) == set(range(10))
        # Background white (a 4-pixel white frame), strokes dark, ink fraction near MNIST's 13%.
        assert (d.images[:, :4, :] == 255).all() and (d.images[:, :, -4:] == 255).all()
        assert d.images.min() == 0
        assert 0.08 < (d.images < 128).mean() < 0.2
    # Label multiset of the two splits is the whole dataset's.
    np.testing.assert_array_equal(
        np.bincount(np.concatenate([train.labels, test.labels]), minlength=10), np.bincount(sk_load().target)
    )
    np.testing.assert_array_equal(digits.load_digits('sklearn', 'test').images, test.images)


def test_zip_with_split_folders(tmp_path):
    members = {
        f'mnist/{split}/{label}_{i:05d}.png': _digit(label, i)
        for i, (split, label) in enumerate([('train', 3), ('train', 1), ('test', 7), ('train', 9), ('test', 0)])
    }
    members['mnist/README.txt'] = np.zeros((1, 1), np.uint8)  # not a digit name: ignored
    _write_zip(tmp_path / 'd.zip', members)
    for split in ('train', 'test'):
        d = digits.load_digits(str(tmp_path / 'd.zip'), split)
        names = sorted(n for n in members if f'/{split}/' in n)
        assert d.labels.tolist() == [int(Path(n).name[0]) for n in names]
        np.testing.assert_array_equal(d.images, np.stack([members[n] for n in names]))


def test_folder_without_split_folders_uses_the_name_hash(tmp_path):
    names = [f'{i % 10}_{i:04d}.png' for i in range(40)]
    for i, n in enumerate(names):
        Image.fromarray(_digit(i % 10, i)).save(tmp_path / n)
    train = digits.load_digits(str(tmp_path), 'train')
    test = digits.load_digits(str(tmp_path), 'test')
    want_test = [n for n in sorted(names) if int(hashlib.sha1(n.encode()).hexdigest(), 16) % 100 < 20]
    assert len(train) + len(test) == 40 and len(test) == len(want_test)
    np.testing.assert_array_equal(test.images, np.stack([_digit(int(n[0]), int(n[2:6])) for n in want_test]))


def test_a_single_split_folder_is_split_by_name_hash(tmp_path):
    names = [f'test/{i % 10}_{i:04d}.pgm' for i in range(60)]
    _write_zip(tmp_path / 'only_test.zip', {n: _digit(i % 10, i) for i, n in enumerate(names)})
    train = digits.load_digits(str(tmp_path / 'only_test.zip'), 'train')
    test = digits.load_digits(str(tmp_path / 'only_test.zip'), 'test')
    want_test = [n for n in sorted(names) if int(hashlib.sha1(Path(n).name.encode()).hexdigest(), 16) % 100 < 20]
    assert len(train) + len(test) == 60 and len(test) == len(want_test) > 0
    np.testing.assert_array_equal(test.labels, [int(Path(n).name[0]) for n in want_test])


def test_white_on_black_collection_is_inverted_and_bad_inputs_are_clear(tmp_path):
    members = {f'test/{k}_{k}.pgm': 255 - _digit(k, k) for k in range(5)}
    members.update({f'train/{k}_{k + 5}.pgm': 255 - _digit(k, k + 5) for k in range(3)})
    _write_zip(tmp_path / 'w.zip', members)
    d = digits.load_digits(str(tmp_path / 'w.zip'), 'test')
    np.testing.assert_array_equal(d.images, np.stack([_digit(k, k) for k in range(5)]))
    d = digits.load_digits(str(tmp_path / 'w.zip'), 'train')
    np.testing.assert_array_equal(d.images, np.stack([_digit(k, k + 5) for k in range(3)]))
    _write_zip(tmp_path / 'bad.zip', {'test/12_0.png': _digit(1, 0), 'train/1_1.png': _digit(1, 1)})
    with pytest.raises(digits.DigitSourceError, match='0..9'):
        digits.load_digits(str(tmp_path / 'bad.zip'), 'test')
    with pytest.raises(digits.DigitSourceError, match='no such file'):
        digits.load_digits(str(tmp_path / 'missing'), 'test')


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack('>BBBB', 0, 0, 0x08, array.ndim) + struct.pack(f'>{array.ndim}I', *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == '.gz' else data)


def test_idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    raw = {s: rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8) for s, n in (('train', 5), ('test', 3))}
    labels = {s: rng.integers(0, 10, size=len(raw[s]), dtype=np.uint8) for s in raw}
    _write_idx(tmp_path / 'train-images-idx3-ubyte.gz', raw['train'])
    _write_idx(tmp_path / 'train-labels-idx1-ubyte.gz', labels['train'])
    _write_idx(tmp_path / 't10k-images-idx3-ubyte', raw['test'])
    _write_idx(tmp_path / 't10k-labels-idx1-ubyte', labels['test'])
    for split in ('train', 'test'):
        d = digits.load_digits(str(tmp_path), split)
        np.testing.assert_array_equal(d.images, 255 - raw[split])  # raw MNIST is white-on-black
        np.testing.assert_array_equal(d.labels, labels[split])
    np.testing.assert_array_equal(digits.read_idx(tmp_path / 't10k-labels-idx1-ubyte'), labels['test'])
    (tmp_path / 'junk').write_bytes(b'\x01\x02\x03\x04')
    with pytest.raises(digits.DigitSourceError, match='magic'):
        digits.read_idx(tmp_path / 'junk')
    truncated = tmp_path / 'short'
    truncated.write_bytes((tmp_path / 't10k-images-idx3-ubyte').read_bytes()[:-5])
    with pytest.raises(digits.DigitSourceError, match='header'):
        digits.read_idx(truncated)


def test_auto_falls_back_to_sklearn_and_explicit_tfds_explains(monkeypatch):
    monkeypatch.setattr(digits, 'tfds_mnist_prepared', lambda data_dir: False)
    monkeypatch.setattr(digits, 'network_available', lambda *a, **k: False)  # never touch the network in tests
    assert digits.resolve_digit_source('auto') == 'sklearn'
    with pytest.raises(digits.DigitSourceError, match="'sklearn'"):
        digits.resolve_digit_source('tfds')
    monkeypatch.setattr(digits, 'tfds_mnist_prepared', lambda data_dir: True)
    assert digits.resolve_digit_source('auto') == 'tfds'


def test_network_probe_on_localhost():
    with socket.socket() as server:
        server.bind(('127.0.0.1', 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert digits.network_available(('127.0.0.1', port), timeout=1.0)
    assert not digits.network_available(('127.0.0.1', port), timeout=1.0)  # closed now: refused at once


def test_tfds_mnist_source_inverts(monkeypatch):
    tfds = pytest.importorskip('tensorflow_datasets')
    monkeypatch.setattr(digits, 'tfds_mnist_prepared', lambda data_dir: True)
    with tfds.testing.mock_data(num_examples=4):
        raw = list(tfds.as_numpy(tfds.builder('mnist').as_dataset(split='test')))
        d = digits.load_digits('tfds', 'test')
    np.testing.assert_array_equal(d.images, np.stack([255 - r['image'][..., 0] for r in raw]))
    np.testing.assert_array_equal(d.labels, [r['label'] for r in raw])


@pytest.mark.shared_data
def test_shared_mnist_test_digits_zip(shared_data):
    path = shared_data / 'mnist' / 'mnist_test_digits.zip'
    if not path.is_file():
        pytest.skip(f'{path} not found')
    train, test = digits.load_digits(str(path), 'train'), digits.load_digits(str(path), 'test')
    assert len(train) + len(test) == 10_000 and 1_500 < len(test) < 2_500  # only a test/ folder: split by name hash
    assert train.images.shape[1:] == (28, 28) and np.bincount(test.labels).min() > 150  # every class represented
    assert (train.images[:, 0, :] == 255).mean() > 0.99  # already inverted: kept as is (white border)
    with zipfile.ZipFile(path) as z:
        first = sorted(n for n in z.namelist() if n.endswith('.pgm') and digits._hash_split(Path(n).name) == 'test')[0]
        want = np.asarray(Image.open(io.BytesIO(z.read(first))))
    assert test.labels[0] == int(Path(first).name.split('_')[0])
    np.testing.assert_array_equal(test.images[0], want)
    assert not set(map(bytes, train.images[:200])) & set(map(bytes, test.images))  # disjoint pools
