"""Sources of 28x28 MNIST-style digits for the synthetic detection set.

Every loader returns a `Digits` for one split ('train' or 'test'): images of shape (N, 28, 28), uint8, INVERTED
(black digit on a white background of 255) as the TF2 reference's generator uses them, and int32 labels 0..9.

`source` strings (config.data.digit_source):
    'tfds'     TFDS `mnist`, read from the data dir. Used only if already prepared there; if not, it is downloaded
               only when the download host answers a 2 s connect probe (a download without network hangs minutes).
    'sklearn'  scikit-learn's bundled `load_digits` (1797 8x8 digits, values 0..16), upscaled to MNIST's look (a
               20x20 digit, centred on a 28x28 canvas). Always available offline. Split with a fixed seed: 20% test.
    'auto'     prepared TFDS mnist, else TFDS mnist downloaded if the network answers quickly, else 'sklearn'.
    a path     - a folder with MNIST IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz],
                 t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]); raw MNIST is white-on-black: inverted.
               - a folder or .zip of images named `<label>_<id>.<ext>`. Images in `train/` and `test/` folders (at
                 any depth) form those splits. If there are not both such folders (no split folder, or e.g. only the
                 MNIST `test/` digits), every image is assigned by a hash of its file name: sha1(name) % 100 < 20 ->
                 test, else train (stable when files are added or removed).
                 Polarity is detected from the image borders: white-on-black sets are inverted.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import os
import re
import socket
import threading
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from absl import logging

DIGIT_SIDE = 28
SPLITS = ('train', 'test')
TEST_FRACTION_PERCENT = 20  # test share for sources without their own split (sklearn, unsplit folders)
SKLEARN_SPLIT_SEED = 0
# MNIST digits sit in a 20x20 box centred on the 28x28 canvas.
_MNIST_BOX = 20
# Host TFDS downloads mnist from; probed before any download.
_DOWNLOAD_HOST = ('storage.googleapis.com', 443)
_IMAGE_NAME = re.compile(r'^(\d+)_[^/\\]*\.(pgm|png|jpg|jpeg|bmp|gif|tif|tiff|ppm|pbm|webp)$', re.IGNORECASE)
_IDX_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}


class DigitSourceError(ValueError):
    """A digit source is unknown, unavailable or malformed; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Digits:
    """One split of digits.

    Attributes:
        images: (N, 28, 28) uint8, black digit on white (background 255).
        labels: (N,) int32 in 0..9.
        source: human-readable description of where they came from.
    """

    images: np.ndarray
    labels: np.ndarray
    source: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# ----------------------------------------------------------------------------------------------------------------
# Resolving a source string.


def network_available(host: tuple[str, int] = _DOWNLOAD_HOST, timeout: float = 2.0) -> bool:
    """True if a TCP connect to `host` succeeds within `timeout` seconds.

    DNS resolution ignores socket timeouts, so the probe runs in a worker thread that is abandoned on timeout.
    """

    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection(host, timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # A daemon thread, so a hung DNS lookup never delays interpreter exit.
    thread = threading.Thread(target=probe, name='network-probe', daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def tfds_mnist_prepared(data_dir: str | None) -> bool:
    """Whether TFDS `mnist` is already prepared in `data_dir` (None = the TFDS default); never downloads."""
    import tensorflow_datasets as tfds

    try:
        return tfds.builder('mnist', data_dir=data_dir or None).is_prepared()
    except Exception as e:  # noqa: BLE001 - a broken or missing install reads as "not prepared"
        logging.info('TFDS mnist not usable in %s: %s', data_dir, e)
        return False


def _download_tfds_mnist(data_dir: str | None) -> None:
    import tensorflow_datasets as tfds

    logging.info('Downloading TFDS mnist into %s', data_dir or 'the TFDS default data dir')
    builder = tfds.builder('mnist', data_dir=data_dir or None)
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    except ModuleNotFoundError as e:
        # tensorflow-datasets 4.9.10 needs `importlib_resources` to download but does not declare it.
        raise DigitSourceError(f'TFDS cannot download mnist: {e}; `pip install importlib_resources`') from e


def resolve_digit_source(source: str, data_dir: str | None = None, *, allow_download: bool = True) -> str:
    """Turns config.data.digit_source into a concrete source: 'tfds', 'sklearn' or an absolute path.

    For 'tfds' (explicit, or picked by 'auto') this makes sure TFDS mnist is prepared in `data_dir`, downloading it
    only when `allow_download` and the download host answers a 2 s probe. Logs which source was chosen.

    Raises:
        DigitSourceError: an explicit source that is unknown or unavailable.
    """
    source = (source or 'auto').strip()
    if source == 'sklearn':
        return 'sklearn'
    if source in ('tfds', 'auto'):
        if tfds_mnist_prepared(data_dir):
            logging.info('Digit source: prepared TFDS mnist in %s', data_dir or 'the TFDS default data dir')
            return 'tfds'
        if allow_download and network_available():
            try:
                _download_tfds_mnist(data_dir)
                logging.info('Digit source: TFDS mnist, downloaded into %s', data_dir or 'the default data dir')
                return 'tfds'
            except Exception as e:  # noqa: BLE001 - fall back (auto) or explain (tfds) below
                if source == 'tfds':
                    raise DigitSourceError(f'digit_source=tfds: downloading TFDS mnist failed: {e}') from e
                logging.warning('TFDS mnist download failed (%s); using the bundled sklearn digits', e)
                return 'sklearn'
        if source == 'tfds':
            raise DigitSourceError(
                f'digit_source=tfds: TFDS mnist is not prepared in {data_dir or "the TFDS default data dir"} and '
                'the download host does not answer. Prepare it where there is network '
                '(`tfds build mnist --data_dir=...`) and copy the data dir here, or set '
                "config.data.digit_source to 'sklearn', 'auto' or a folder/zip/IDX path."
            )
        logging.info('Digit source: bundled scikit-learn digits (no prepared TFDS mnist, no network)')
        return 'sklearn'
    path = Path(source).expanduser()
    if not path.exists():
        raise DigitSourceError(
            f"digit_source={source!r}: no such file or folder. Expected 'auto', 'tfds', 'sklearn', a folder "
            'of MNIST IDX files, or a folder/.zip of images named <label>_<id>.<ext>.'
        )
    if path.is_file() and not zipfile.is_zipfile(path):
        raise DigitSourceError(f'digit_source={source!r}: a file source must be a .zip of digit images')
    resolved = str(path.resolve())
    logging.info('Digit source: %s', resolved)
    return resolved


def source_tag(resolved: str) -> str:
    """A short name-safe tag for a resolved source, used in dataset config names: 'tfds', 'sklearn', 'path<hash>'."""
    if resolved in ('tfds', 'sklearn'):
        return resolved
    return 'path' + hashlib.sha1(resolved.encode()).hexdigest()[:10]


# ----------------------------------------------------------------------------------------------------------------
# Loading.


def load_digits(source: str, split: str, *, data_dir: str | None = None) -> Digits:
    """Loads one split of digits from a source string (see the module docstring).

    Args:
        source: 'auto', 'tfds', 'sklearn' or a path; 'auto'/'tfds' are resolved first (may probe the network).
        split: 'train' or 'test'.
        data_dir: TFDS data dir for the 'tfds' source (None = TFDS default).

    Returns:
        Digits with images (N, 28, 28) uint8 black-on-white and labels (N,) int32.
    """
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    resolved = resolve_digit_source(source, data_dir)
    if resolved == 'tfds':
        digits = _load_tfds_mnist(split, data_dir)
    elif resolved == 'sklearn':
        digits = sklearn_digits(split)
    else:
        path = Path(resolved)
        if path.is_dir() and _find_idx_files(path, split, required=False) is not None:
            digits = _load_idx_dir(path, split)
        else:
            digits = _load_image_collection(path, split)
    if len(digits) == 0:
        raise DigitSourceError(f'digit source {digits.source} has no {split} digits')
    logging.info('Loaded %d %s digits from %s', len(digits), split, digits.source)
    return digits


def _load_tfds_mnist(split: str, data_dir: str | None) -> Digits:
    import tensorflow_datasets as tfds

    builder = tfds.builder('mnist', data_dir=data_dir or None)
    # Batches rather than batch_size=-1: the latter aborts the process on generator-backed (mocked) datasets.
    batches = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False).batch(10_000)))
    images = 255 - np.concatenate([b['image'] for b in batches]).astype(np.uint8)[..., 0]  # stored white-on-black
    labels = np.concatenate([b['label'] for b in batches]).astype(np.int32)
    return Digits(images, labels, f'tfds mnist ({builder.data_dir})')


@functools.lru_cache(maxsize=2)
def sklearn_digits(split: str) -> Digits:
    """scikit-learn's 8x8 digits made MNIST-like: (N, 28, 28) uint8 black-on-white.

    Each 8x8 digit (values 0..16) is upscaled bilinearly to 20x20 (MNIST's digit box), its contrast stretched so the
    strokes saturate and thin out as MNIST's do (v' = clip((v - 0.35) / 0.4, 0, 1) on v in [0, 1]: about 14% of
    pixels dark, MNIST has 13%), padded by 4 pixels to 28x28 and inverted.
    Split: a permutation with seed 0; the first 20% are 'test', the rest 'train'.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images8 = np.asarray(bunch.images, np.float32) / 16.0
    labels = np.asarray(bunch.target, np.int32)
    order = np.random.default_rng(SKLEARN_SPLIT_SEED).permutation(len(labels))
    num_test = len(labels) * TEST_FRACTION_PERCENT // 100
    idx = np.sort(order[:num_test] if split == 'test' else order[num_test:])
    up = resize_bilinear(images8[idx], _MNIST_BOX, _MNIST_BOX)
    up = np.clip((up - 0.35) / 0.4, 0.0, 1.0)
    pad = (DIGIT_SIDE - _MNIST_BOX) // 2
    canvas = np.zeros((len(idx), DIGIT_SIDE, DIGIT_SIDE), np.float32)
    canvas[:, pad : pad + _MNIST_BOX, pad : pad + _MNIST_BOX] = up
    images = (255 - np.rint(canvas * 255)).astype(np.uint8)
    labels = labels[idx]
    images.flags.writeable = labels.flags.writeable = False  # cached and shared between callers
    return Digits(images, labels, 'scikit-learn load_digits (8x8 upscaled)')


def resize_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize over the last two axes, with half-pixel centres and edge clamping (cv2.INTER_LINEAR
    semantics, no antialiasing). (..., h, w) -> float32 (..., out_h, out_w); the caller rounds if it wants integers.
    """
    image = np.asarray(image, np.float32)
    h, w = image.shape[-2:]

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        src = np.clip(src, 0.0, n_in - 1)
        lo = np.floor(src).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (src - lo).astype(np.float32)

    y0, y1, wy = axis(h, out_h)
    x0, x1, wx = axis(w, out_w)
    rows = image[..., y0, :] * (1 - wy)[:, None] + image[..., y1, :] * wy[:, None]
    return rows[..., x0] * (1 - wx) + rows[..., x1] * wx


def resize_uint8(image: np.ndarray, side: int) -> np.ndarray:
    """(..., h, w) uint8 -> (..., side, side) uint8 by `resize_bilinear`, rounded to nearest."""
    if image.shape[-2:] == (side, side):
        return np.asarray(image, np.uint8)
    return np.clip(np.rint(resize_bilinear(image, side, side)), 0, 255).astype(np.uint8)


# ---- IDX files ----


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (optionally gzipped), e.g. MNIST's train-images-idx3-ubyte. Returns its array as stored."""
    path = Path(path)
    opener = gzip.open if path.suffix == '.gz' else open
    with opener(path, 'rb') as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DigitSourceError(f'{path}: not an IDX file (bad magic number)')
    dtypes = {0x08: '>u1', 0x09: '>i1', 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4', 0x0E: '>f8'}
    if data[2] not in dtypes:
        raise DigitSourceError(f'{path}: unknown IDX data type 0x{data[2]:02x}')
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, '>u4', count=ndim, offset=4))
    dtype = np.dtype(dtypes[data[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - offset != expected:
        raise DigitSourceError(f'{path}: IDX header says {shape} ({expected} bytes) but holds {len(data) - offset}')
    return np.frombuffer(data, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder('='))


def _find_idx_files(folder: Path, split: str, *, required: bool) -> tuple[Path, Path] | None:
    found = []
    for stem in _IDX_FILES[split]:
        # Accept the official names, their .gz, and the common `train-images.idx3-ubyte` spelling.
        candidates = [stem, stem + '.gz', stem.replace('-idx', '.idx'), stem.replace('-idx', '.idx') + '.gz']
        hit = next((folder / c for c in candidates if (folder / c).is_file()), None)
        if hit is None:
            if required:
                raise DigitSourceError(f'{folder}: no {stem}[.gz] for the {split} split')
            return None
        found.append(hit)
    return found[0], found[1]


def _load_idx_dir(folder: Path, split: str) -> Digits:
    image_path, label_path = _find_idx_files(folder, split, required=True)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or len(images) != len(labels):
        raise DigitSourceError(
            f'{folder}: IDX images {images.shape} {images.dtype} and labels {labels.shape} do not match (N,28,28) '
            'uint8 and (N,)'
        )
    images = 255 - images  # raw MNIST is white-on-black
    if images.shape[1:] != (DIGIT_SIDE, DIGIT_SIDE):
        images = resize_uint8(images, DIGIT_SIDE)
    return Digits(images, _check_labels(labels, str(image_path)), f'IDX {image_path}')


# ---- folders and zips of <label>_<id>.<ext> images ----


def _split_of(member: str) -> str | None:
    """'train'/'test' if a parent folder of `member` is named so (the innermost wins), else None."""
    for part in reversed(Path(member).parts[:-1]):
        if part.lower() in SPLITS:
            return part.lower()
    return None


def _hash_split(name: str) -> str:
    bucket = int(hashlib.sha1(name.encode()).hexdigest(), 16) % 100
    return 'test' if bucket < TEST_FRACTION_PERCENT else 'train'


def _list_collection(path: Path) -> tuple[list[str], zipfile.ZipFile | None]:
    if path.is_dir():
        names = [p.relative_to(path).as_posix() for p in path.rglob('*') if p.is_file()]
        return sorted(names), None
    archive = zipfile.ZipFile(path)
    return sorted(n for n in archive.namelist() if not n.endswith('/')), archive


def _load_image_collection(path: Path, split: str) -> Digits:
    names, archive = _list_collection(path)
    digit_names = [n for n in names if _IMAGE_NAME.match(Path(n).name)]
    if not digit_names:
        raise DigitSourceError(f'{path}: no digit images named <label>_<id>.<ext> (and no MNIST IDX files) were found')
    present = sorted({s for n in digit_names if (s := _split_of(n)) is not None})
    if present == sorted(SPLITS):
        chosen = [n for n in digit_names if _split_of(n) == split]
        skipped = sum(_split_of(n) is None for n in digit_names)
        if skipped:
            logging.warning('%s: %d digit images outside train/ and test/ folders are ignored', path, skipped)
        how = f'{split}/ folder'
    else:
        if present:
            # e.g. the 10k MNIST test digits alone: split them by name so train and test canvases stay disjoint.
            logging.warning(
                '%s: only a %s/ folder of digits; splitting its images by name hash (%d%% test)',
                path, present[0], TEST_FRACTION_PERCENT,
            )
        chosen = [n for n in digit_names if _hash_split(Path(n).name) == split]
        how = f'name-hash split, {TEST_FRACTION_PERCENT}% test'

    def read(name: str) -> bytes:
        return archive.read(name) if archive is not None else (path / name).read_bytes()

    images = (
        np.stack([_decode_digit(read(n), f'{path}:{n}') for n in chosen])
        if chosen
        else np.zeros((0, DIGIT_SIDE, DIGIT_SIDE), np.uint8)
    )
    labels = _check_labels(np.array([int(_IMAGE_NAME.match(Path(n).name).group(1)) for n in chosen]), str(path))
    if archive is not None:
        archive.close()
    if len(images) and _is_white_on_black(images):
        logging.info('%s: digits are white-on-black; inverting them', path)
        images = 255 - images
    return Digits(images, labels, f'{path} ({how})')


def _decode_digit(data: bytes, where: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            gray = np.asarray(im.convert('L'), np.uint8)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise DigitSourceError(f'{where}: unreadable image ({e})') from e
    return resize_uint8(gray, DIGIT_SIDE)


def _is_white_on_black(images: np.ndarray) -> bool:
    """MNIST-style digits touch their border rarely: the border's median tells the background colour."""
    border = np.concatenate([images[:, 0, :], images[:, -1, :], images[:, :, 0], images[:, :, -1]], axis=1)
    return float(np.median(border)) < 128


def _check_labels(labels: Iterable[int], where: str) -> np.ndarray:
    labels = np.asarray(labels, np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DigitSourceError(f'{where}: digit labels must be 0..9, found {labels.min()}..{labels.max()}')
    return labels.astype(np.int32)
