"""A data set health report: what a data set holds and what is wrong with it, before a run trains on it.

    python -m yolo_jax.data.check --config=configs/mnist.py [--output=DIR] [--splits=train,test]

prints a short summary and, with --output, writes `report.json` and three plots into DIR: `classes.png`
(instances per class and split), `box_sizes.png` (box sizes sqrt(w * h) in input pixels, the configured anchors
marked) and `aspect_ratios.png` (w / h). The report holds, per split: images and instances per class, images
without boxes, images possibly half labelled (`missing_common_class`: without a class that at least
COMMON_CLASS_SHARE of the split's labelled images have), and every problem found; across splits: duplicate
images and how well config.model.anchors cover the boxes.

Problems are collected, never raised: a run would refuse some of them (the readers raise) and silently fix others
(clip, drop); the check lists them all with the file and line (or JSON id) they come from. Kinds:
    bad_entry        a line or JSON entry that cannot be read (wrong field count, non-number, unknown image id)
    missing_image    the image file does not exist
    unreadable_image the image does not decode (its header, or its pixels: a truncated file)
    unknown_class    a class id outside [0, number of classes)
    degenerate_box   x2 <= x1 or y2 <= y1 (no area; training rejects or drops it)
    outside_box      no area inside the image (training drops it)
    partly_outside_box  reaches more than OUTSIDE_TOLERANCE_PX beyond the image border (training clips it)
    duplicate_box    a second box of the same class in the same image with IoU > DUPLICATE_BOX_IOU (or identical)
    reader_warning   a strict reader's warning (`read_strict`, for formats without a lenient reader here)

Duplicate images, within and across splits (a test image that is also a training image inflates every figure):
    exact  the same file bytes (file data sets) or the same decoded pixels (TFDS sets), by sha256;
    near   candidates whose 64-bit perceptual hash (pHash: the signs, against their median, of the 8 x 8
           lowest-frequency DCT coefficients of a 32 x 32 grey thumbnail) differ in at most NEAR_HASH_BITS bits,
           confirmed by a Pearson correlation >= NEAR_CORRELATION of the thumbnails themselves. The confirmation
           matters on low-content images: on the generated MNIST set (white canvases with a few digits) 97 pairs of
           different images lie within 6 bits of each other (8 within 0), with thumbnail correlations <= 0.90,
           while a copy resized to 300 px and re-encoded as JPEG (quality 75) lies within 4 bits, correlation
           >= 0.995 (measured on its 1200 images).
A pair is a *leak* when its images lie in different splits.

Anchor coverage (train split by default; every checked split is reported): each valid box (clipped to its image,
not difficult, non-degenerate) is mapped to input pixels as the pipeline maps it (config.data.resize to
config.model.input_size); the best-possible recall is the fraction of boxes with some anchor whose width and
height ratios r (box / anchor) satisfy max(r, 1 / r) < ANCHOR_RATIO_THRESHOLD (YOLOv5's autoanchor metric), and
the mean best IoU the mean over boxes of the IoU (aligned centres) with their best anchor (`anchors.py`).

Sources: the file formats ('annotations', 'coco_json', 'yolo_txt') are read here, leniently (`read_*_raw`),
because the training readers stop at the first bad file; a format's strict reader (returning AnnotationRecords)
can be wrapped by `read_strict` to collect its errors and warnings; any other data set (TFDS sets, formats added
later and not wired into `read_split`) is read through `sources.load_split` (every element decoded).
`check_at_start` runs a cheaper form at the start of a training run (config.data.check_at_start) on the run's own
decoded splits: it logs `summary_line` and warns about leaks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from absl import flags, logging

from yolo_jax import errors
from yolo_jax.data import annotations as annotations_lib
from yolo_jax.data import decode
from yolo_jax.data.annotations import AnnotationRecord

NEAR_HASH_BITS = 10  # pHash Hamming distance of near-duplicate candidates (copies measured <= 4)
NEAR_CORRELATION = 0.98  # thumbnail correlation that confirms a candidate (copies >= 0.995, MNIST pairs <= 0.90)
DUPLICATE_BOX_IOU = 0.9
OUTSIDE_TOLERANCE_PX = 0.5  # sub-pixel overshoot is rounding in whatever wrote the file, not a problem
ANCHOR_RATIO_THRESHOLD = 4.0  # YOLOv5's anchor_t
THUMB_SIDE = 32  # grey thumbnail side for the pHash and the near-duplicate confirmation
_HASH_SIDE = 8  # low-frequency DCT block: 8 x 8 = 64 bits
SUMMARY_LISTED = 5  # problems shown per kind in the printed summary (report.json lists all)
# A class in at least this share of a split's labelled images is "common": the labelled images without it are
# listed as possibly half labelled (BCCD: red cells fill every photo, but 12 trainval and 3 test photos have none
# labelled; each detected red cell there counts as false, 0.008 of test mAP@0.5).
COMMON_CLASS_SHARE = 0.9
ISSUE_KINDS = ('bad_entry', 'missing_image', 'unreadable_image', 'unknown_class', 'degenerate_box', 'outside_box',
               'partly_outside_box', 'duplicate_box', 'reader_warning')


# ----------------------------------------------------------------------------------------------------------------
# Fingerprints: exact digest, grey thumbnail, perceptual hash.


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """digest: sha256 hex of the file bytes (files) or of the decoded pixels (arrays); thumb: (THUMB_SIDE,
    THUMB_SIDE) uint8 grey thumbnail (box-filtered); phash: its 64-bit perceptual hash."""

    digest: str
    thumb: np.ndarray
    phash: int


def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix (n, n): C @ x is the DCT of a length-n signal x."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    c = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    c[0] /= np.sqrt(2.0)
    return c


def phash(thumb: np.ndarray) -> int:
    """64-bit pHash of a (THUMB_SIDE, THUMB_SIDE) grey thumbnail: bit i (row-major over the 8 x 8 lowest
    frequencies of its 2-D DCT) is set when that coefficient exceeds their median."""
    c = dct_matrix(thumb.shape[0])
    coeffs = (c @ np.asarray(thumb, np.float64) @ c.T)[:_HASH_SIDE, :_HASH_SIDE].ravel()
    coeffs = np.round(coeffs, 6)  # a flat image's AC coefficients are float noise around 0: make them 0
    bits = coeffs > np.median(coeffs)
    return int(np.packbits(bits).view('>u8')[0])


def _thumbnail(image: Any) -> np.ndarray:
    """(THUMB_SIDE, THUMB_SIDE) uint8 grey thumbnail of a PIL image (box filter: every pixel counts)."""
    from PIL import Image  # noqa: PLC0415

    grey = image.convert('L').resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX)
    return np.asarray(grey, np.uint8)


def file_fingerprint(path: str | os.PathLike) -> Fingerprint:
    """Fingerprint of an image file; raises (OSError, PIL's errors) when it does not decode in full. JPEGs are
    decoded at a reduced scale (PIL's draft mode), several times faster on photos; every byte is still read."""
    from PIL import Image  # noqa: PLC0415

    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        im.draft('RGB', (4 * THUMB_SIDE, 4 * THUMB_SIDE))  # a no-op for formats other than JPEG
        im.load()
        thumb = _thumbnail(im)
    return Fingerprint(hashlib.sha256(data).hexdigest(), thumb, phash(thumb))


def array_fingerprint(image: np.ndarray) -> Fingerprint:
    """Fingerprint of a decoded image (H, W, 3) uint8."""
    from PIL import Image  # noqa: PLC0415

    image = np.ascontiguousarray(image, np.uint8)
    digest = hashlib.sha256(repr(image.shape).encode() + image.tobytes()).hexdigest()
    thumb = _thumbnail(Image.fromarray(image))
    return Fingerprint(digest, thumb, phash(thumb))


def thumb_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two thumbnails; two flat thumbnails correlate 1 if their levels differ by < 1, else 0
    (a flat one and a textured one: 0)."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    da, db = a - a.mean(), b - b.mean()
    na, nb = float(np.sqrt((da * da).sum())), float(np.sqrt((db * db).sum()))
    if na < 1e-9 or nb < 1e-9:
        return float(na < 1e-9 and nb < 1e-9 and abs(a.mean() - b.mean()) < 1.0)
    return float((da * db).sum() / (na * nb))


def hash_pairs(hashes: np.ndarray, max_bits: int, block: int | None = None) -> list[tuple[int, int, int]]:
    """Every pair i < j of 64-bit hashes (N,) uint64 within `max_bits` Hamming distance: (i, j, distance).

    All pairs, `block` rows at a time (default: ~16 M distances, 128 MiB, per block)."""
    hashes = np.asarray(hashes, np.uint64)
    block = block or max(1, (1 << 24) // max(len(hashes), 1))
    out = []
    for start in range(0, len(hashes), block):
        rows = hashes[start:start + block]
        dist = np.bitwise_count(rows[:, None] ^ hashes[None, :])
        ii, jj = np.nonzero(dist <= max_bits)
        keep = jj > ii + start
        out.extend((int(i + start), int(j), int(dist[i, j])) for i, j in zip(ii[keep], jj[keep], strict=True))
    return out


# ----------------------------------------------------------------------------------------------------------------
# One split, as read for checking.


@dataclasses.dataclass
class SplitRecords:
    """One split read leniently.

    records: AnnotationRecords with the boxes as written: float64 (N, 4) x1, y1, x2, y2 in pixels of the image,
        neither clipped nor filtered (degenerate and outside boxes stay; class ids may be out of range).
    where: per record, where it comes from (`file:line`, `file: image id N`, a label file, `split #index`).
    box_where: per record, per box, where that box comes from.
    issues: problems found while reading (missing / unreadable images, unreadable entries), dicts as `_issue`.
    fingerprints: per record, its Fingerprint (None: not computed, or the image did not decode).
    """

    split: str
    records: list[AnnotationRecord] = dataclasses.field(default_factory=list)
    where: list[str] = dataclasses.field(default_factory=list)
    box_where: list[list[str]] = dataclasses.field(default_factory=list)
    issues: list[dict] = dataclasses.field(default_factory=list)
    fingerprints: list[Fingerprint | None] = dataclasses.field(default_factory=list)

    def add(self, record: AnnotationRecord, where: str, box_where: list[str],
            fingerprint: Fingerprint | None = None) -> None:
        self.records.append(record)
        self.where.append(where)
        self.box_where.append(box_where)
        self.fingerprints.append(fingerprint)


def _issue(kind: str, split: str, where: str, detail: str, image: str = '', box: int | None = None) -> dict:
    """{'kind', 'split', 'where', 'detail', 'image', 'box' (0-based index in the image's record, or None)}."""
    return {'kind': kind, 'split': split, 'where': where, 'detail': detail, 'image': image, 'box': box}


def _header(path: Path) -> tuple[int, int, str] | str:
    """(width, height, PIL format) from the header, or the error text."""
    try:
        return decode.header(path)
    except Exception as e:  # noqa: BLE001 - any PIL failure means unreadable
        return f'{type(e).__name__}: {e}'


def _record(path: Path, boxes: list, classes: list, size: tuple[int, int, str], line: int,
            difficult: list | None = None) -> AnnotationRecord:
    width, height, image_format = size
    return AnnotationRecord(
        path=str(path), boxes=np.asarray(boxes, np.float64).reshape(-1, 4), classes=np.asarray(classes, np.int64),
        width=width, height=height, line=line, image_format=image_format,
        difficult=None if difficult is None else np.asarray(difficult, bool))


def read_annotations_raw(path: str | os.PathLike, split: str) -> SplitRecords:
    """The reference's text format (annotations.py), leniently: every line with a readable image becomes a record
    (also those without boxes); boxes `x1,y1,x2,y2,cls` that do not parse are `bad_entry` issues."""
    path = Path(path)
    if not path.is_file():
        raise errors.MissingFileError(f'{path}: annotation file not found')
    out = SplitRecords(split)
    base = path.resolve().parent
    for number, raw in enumerate(path.read_text(encoding='utf-8', errors='replace').splitlines(), start=1):
        text = raw.strip()
        if not text or text.startswith('#'):
            continue
        where = f'{path}:{number}'
        tokens = text.split()
        first_box = next((i for i, t in enumerate(tokens) if i > 0 and ',' in t), len(tokens))
        path_text = text if first_box == len(tokens) else text[:text.index(tokens[first_box], len(tokens[0]))].strip()
        image = annotations_lib._resolve_image(path_text, base)
        if not image.is_file():
            out.issues.append(_issue('missing_image', split, where, f'image not found: {path_text}', str(image)))
            continue
        size = _header(image)
        if isinstance(size, str):
            out.issues.append(_issue('unreadable_image', split, where, size, str(image)))
            continue
        boxes, classes, box_where = [], [], []
        for k, token in enumerate(tokens[first_box:], start=1):
            try:
                x1, y1, x2, y2, cls = (float(f) for f in token.split(','))
                if not cls.is_integer():
                    raise ValueError
            except ValueError:
                out.issues.append(_issue('bad_entry', split, where, f'box {k} {token!r} is not x1,y1,x2,y2,cls',
                                         str(image)))
                continue
            boxes.append((x1, y1, x2, y2))
            classes.append(int(cls))
            box_where.append(f'{where} box {k}')
        out.add(_record(image, boxes, classes, size, number), where, box_where)
    return out


def read_coco_json_raw(path: str | os.PathLike, image_dir: str | os.PathLike | None,
                       split: str) -> tuple[SplitRecords, tuple[str, ...]]:
    """A COCO-format JSON (coco_json.py), leniently: (records of the images that exist and decode in their
    header, class names). A file that is not JSON or has no valid categories raises (nothing to check)."""
    from yolo_jax.data import coco_json  # noqa: PLC0415

    path = Path(path)
    data = coco_json._load(path)
    cat_ids, names = coco_json._categories(data, path)
    class_of = {cid: k for k, cid in enumerate(cat_ids)}
    root = Path(image_dir).expanduser() if image_dir else path.resolve().parent
    out = SplitRecords(split)
    images: dict[int, dict] = {}
    unusable: set = set()  # image ids already reported (missing, unreadable): their annotations are no new problem
    for k, im in enumerate(data['images']):
        iid = im.get('id') if isinstance(im, dict) else None
        file_name = im.get('file_name') if isinstance(im, dict) else None
        if not isinstance(iid, int) or isinstance(iid, bool) or iid in images or not isinstance(file_name, str):
            out.issues.append(_issue('bad_entry', split, f'{path}: images[{k}]',
                                     f'needs a unique integer id and a file_name, got {im!r}'[:200]))
            continue
        where = f'{path}: image id {iid}'
        image = root / file_name
        if not image.is_file():
            out.issues.append(_issue('missing_image', split, where, f'image not found: {image}', str(image)))
            unusable.add(iid)
            continue
        size = _header(image)
        if isinstance(size, str):
            out.issues.append(_issue('unreadable_image', split, where, size, str(image)))
            unusable.add(iid)
            continue
        images[iid] = {'path': image, 'size': size, 'where': where, 'boxes': [], 'classes': [], 'crowd': [],
                       'box_where': []}
    for k, ann in enumerate(data['annotations']):
        aid = ann.get('id', k) if isinstance(ann, dict) else k
        where = f'{path}: annotation id {aid}'
        iid = ann.get('image_id') if isinstance(ann, dict) else None
        if not isinstance(iid, int) or iid not in images:
            if not (isinstance(iid, int) and iid in unusable):
                out.issues.append(_issue('bad_entry', split, where, f'unknown or unusable image_id {iid!r}'))
            continue
        im = images[iid]
        bbox = ann.get('bbox')
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(coco_json._number(v) for v in bbox)):
            out.issues.append(_issue('bad_entry', split, where, f'bbox must be [x, y, w, h], got {bbox!r}',
                                     str(im['path'])))
            continue
        x, y, w, h = (float(v) for v in bbox)
        im['boxes'].append((x, y, x + w, y + h))
        cid = ann.get('category_id')
        im['classes'].append(class_of.get(cid, -1) if isinstance(cid, int) else -1)  # -1: reported unknown_class
        im['crowd'].append(ann.get('iscrowd', 0) == 1)
        im['box_where'].append(where + ('' if cid in class_of else f' (category_id {cid!r})'))
    for iid, im in sorted(images.items()):
        out.add(_record(im['path'], im['boxes'], im['classes'], im['size'], iid, im['crowd']), im['where'],
                im['box_where'])
    return out, names


def read_yolo_txt_raw(images: str | os.PathLike, split: str) -> SplitRecords:
    """YOLO label files (yolo_txt.py), leniently: one record per readable image; label lines that do not parse
    are `bad_entry` issues; boxes as written (normalised cx, cy, w, h -> pixels, unclipped)."""
    from yolo_jax.data import yolo_txt  # noqa: PLC0415

    out = SplitRecords(split)
    try:
        listing = yolo_txt.list_images(images)
    except yolo_txt.YoloTxtError as e:
        if 'image not found' in str(e) or 'no image' in str(e):
            raise errors.MissingFileError(str(e)) from None
        raise
    for index, image in enumerate(listing):
        size = _header(image)
        if isinstance(size, str):
            out.issues.append(_issue('unreadable_image', split, str(image), size, str(image)))
            continue
        width, height, _ = size
        label = yolo_txt.label_path(image)
        boxes, classes, box_where = [], [], []
        lines = label.read_text(encoding='utf-8', errors='replace').splitlines() if label.is_file() else []
        for number, raw in enumerate(lines, start=1):
            where = f'{label}:{number}'
            fields = raw.split()
            if not fields:
                continue
            try:
                cls = float(fields[0])
                cx, cy, w, h = (float(f) for f in fields[1:])
                if len(fields) != 5 or not cls.is_integer():
                    raise ValueError
            except ValueError:
                out.issues.append(_issue('bad_entry', split, where, f'expected `cls cx cy w h`, got {raw.strip()!r}',
                                         str(image)))
                continue
            boxes.append(((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height))
            classes.append(int(cls))
            box_where.append(where)
        out.add(_record(image, boxes, classes, size, index), str(label if label.is_file() else image), box_where)
    return out


def read_strict(reader: Callable[[], Sequence[AnnotationRecord]], split: str) -> SplitRecords:
    """Any strict reader returning AnnotationRecords (a format added later: `lambda: read_x(path, names)[0]`),
    made to collect: its warnings (boxes clipped or dropped) become `reader_warning` issues and an AnnotationError
    (one line per problem after its header) `bad_entry` issues, with no records (the reader returns none).
    Boxes are then the reader's (clipped and filtered), so the box checks see what training would."""
    import warnings  # noqa: PLC0415

    out = SplitRecords(split)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', annotations_lib.AnnotationWarning)
        try:
            records = list(reader())
        except annotations_lib.AnnotationError as e:
            lines = [ln.strip() for ln in str(e).splitlines()]
            for line in (lines[1:] if len(lines) > 1 else lines):
                if line and not line.startswith('... and'):
                    where, _, detail = line.partition(': ')
                    out.issues.append(_issue('bad_entry', split, where, detail or line))
            records = []
    for w in caught:
        if issubclass(w.category, annotations_lib.AnnotationWarning):
            where, _, detail = str(w.message).partition(': ')
            out.issues.append(_issue('reader_warning', split, where, detail))
    for r in records:
        out.add(r, f'{r.path}', [f'{r.path} box {k + 1}' for k in range(len(r.classes))])
    return out


def read_elements(elements: Iterable[dict], split: str, *, fingerprints: bool = True) -> SplitRecords:
    """Decoded data set elements (sources.load_split's: 'image', 'boxes' pixels xyxy, 'classes', 'difficult',
    'image_id'), e.g. a TFDS set or a run's own splits: one record per element, fingerprinted from its pixels."""
    out = SplitRecords(split)
    for index, ex in enumerate(elements):
        image = np.asarray(ex['image'])
        image_id = ex['image_id']
        name = image_id.decode('utf-8', 'replace') if isinstance(image_id, bytes) else str(image_id)
        where = f'{split} #{index} ({name})'
        boxes = np.asarray(ex['boxes'], np.float64).reshape(-1, 4)
        record = AnnotationRecord(path=name, boxes=boxes, classes=np.asarray(ex['classes'], np.int64).reshape(-1),
                                  width=int(image.shape[1]), height=int(image.shape[0]), line=index, image_format='',
                                  difficult=np.asarray(ex['difficult'], bool).reshape(-1))
        out.add(record, where, [f'{where} box {k + 1}' for k in range(len(boxes))],
                array_fingerprint(image) if fingerprints else None)
    return out


def read_split(config, split: str, class_names: Sequence[str]) -> SplitRecords:
    """`split` of config.data.dataset for checking: the file formats leniently (`read_*_raw`), anything else through
    `sources.load_split` (whose own errors then end the check, as they would end a run)."""
    from yolo_jax.data import own_data, sources  # noqa: PLC0415
    from yolo_jax.data.source_base import FileSource  # noqa: PLC0415

    dataset = str(config.data.dataset)
    d = config.data
    if isinstance(sources.get_source(dataset), FileSource) and split not in sources.SPLITS:
        raise errors.ConfigError(f'--splits: {split!r} is not one of {sources.SPLITS} of dataset={dataset!r}')
    if dataset in own_data.DATASETS:  # a user's folder: its strict reader, errors and warnings collected
        return read_strict(lambda: own_data.read_split(config, split)[0], split)
    if dataset in ('annotations', 'coco_json'):
        annotations_path = str(d[f'{split}_annotations'])
        if not annotations_path:
            raise errors.ConfigError(f'config.data.{split}_annotations: dataset={dataset!r} needs a file to check')
        if dataset == 'annotations':
            return read_annotations_raw(annotations_path, split)
        records, names = read_coco_json_raw(annotations_path, str(d[f'{split}_images']) or None, split)
        if tuple(names) != tuple(class_names):
            records.issues.append(_issue('bad_entry', split, annotations_path,
                                         f'categories {list(names)} differ from the train split\'s '
                                         f'{list(class_names)}'))
        return records
    if dataset == 'yolo_txt':
        images = str(d[f'{split}_images'])
        if not images:
            raise errors.ConfigError(f"config.data.{split}_images: dataset='yolo_txt' needs an image folder or list")
        return read_yolo_txt_raw(images, split)
    import tensorflow_datasets as tfds  # noqa: PLC0415

    sources.prepare(config)
    try:
        ds, _ = sources.load_split(config, split)
    except errors.UserError:
        raise
    except ValueError as e:  # a split name the data set does not have
        raise errors.UserError(f'--splits: {e}') from None
    return read_elements(tfds.as_numpy(ds), split)


def fingerprint_files(split_records: SplitRecords, *, threads: int | None = None) -> None:
    """Fills split_records.fingerprints of file records (decoding every image; threads: PIL releases the GIL);
    an image that does not decode becomes an `unreadable_image` issue."""
    todo = [i for i, f in enumerate(split_records.fingerprints) if f is None]

    def one(i: int) -> Fingerprint | str:
        try:
            return file_fingerprint(split_records.records[i].path)
        except Exception as e:  # noqa: BLE001 - any decode failure means unreadable
            return f'{type(e).__name__}: {e}'

    workers = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, todo))
    for i, result in zip(todo, results, strict=True):
        if isinstance(result, str):
            split_records.issues.append(_issue('unreadable_image', split_records.split, split_records.where[i],
                                               result, split_records.records[i].path))
        else:
            split_records.fingerprints[i] = result


# ----------------------------------------------------------------------------------------------------------------
# Analysis (pure NumPy on records).


def pairwise_iou(boxes: np.ndarray) -> np.ndarray:
    """IoU of every pair of boxes (N, 4) x1, y1, x2, y2 with positive area -> (N, N)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    x1 = np.maximum(b[:, None, 0], b[None, :, 0])
    y1 = np.maximum(b[:, None, 1], b[None, :, 1])
    x2 = np.minimum(b[:, None, 2], b[None, :, 2])
    y2 = np.minimum(b[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area[:, None] + area[None, :] - inter)


def box_issues(record: AnnotationRecord, box_where: Sequence[str], num_classes: int, split: str) -> list[dict]:
    """Problems of one image's boxes (the kinds unknown_class ... duplicate_box of the module docstring); a box
    has at most one of degenerate / outside / partly outside; duplicates are looked for among the boxes with area
    and a known class (the later box of a pair is reported, naming the earlier)."""
    boxes = np.asarray(record.boxes, np.float64).reshape(-1, 4)
    classes = np.asarray(record.classes).reshape(-1)
    w, h, tol = float(record.width), float(record.height), OUTSIDE_TOLERANCE_PX
    out = []
    good = np.zeros(len(boxes), bool)

    def add(kind: str, k: int, detail: str) -> None:
        out.append(_issue(kind, split, box_where[k], detail, record.path, k))

    for k, ((x1, y1, x2, y2), c) in enumerate(zip(boxes, classes, strict=True)):
        text = f'box {x1:g},{y1:g},{x2:g},{y2:g}'
        if not 0 <= c < num_classes:
            add('unknown_class', k, f'{text}: class id {c} not in [0, {num_classes})')
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
            add('degenerate_box', k, f'{text} has no area (needs x2 > x1 and y2 > y1)')
        elif min(x2, w) <= max(x1, 0.0) or min(y2, h) <= max(y1, 0.0):
            add('outside_box', k, f'{text} lies outside the {record.width}x{record.height} image')
        else:
            if x1 < -tol or y1 < -tol or x2 > w + tol or y2 > h + tol:
                add('partly_outside_box', k, f'{text} reaches outside the {record.width}x{record.height} image')
            good[k] = 0 <= c < num_classes
    idx = np.flatnonzero(good)
    if len(idx) > 1:
        iou = pairwise_iou(boxes[idx])
        same = classes[idx][:, None] == classes[idx][None, :]
        for a, b in zip(*np.nonzero(np.triu((iou > DUPLICATE_BOX_IOU) & same, k=1)), strict=True):
            ka, kb = int(idx[a]), int(idx[b])
            add('duplicate_box', kb, f'same class {int(classes[kb])} as box {ka + 1} ({box_where[ka]}), IoU '
                f'{iou[a, b]:.3f}')
    return out


def valid_boxes(record: AnnotationRecord, num_classes: int) -> np.ndarray:
    """(M, 4) float64: the boxes training uses, clipped to the image: known class, not difficult, area inside."""
    boxes = np.asarray(record.boxes, np.float64).reshape(-1, 4)
    clipped = np.clip(boxes, 0, [record.width, record.height, record.width, record.height])
    classes = np.asarray(record.classes).reshape(-1)
    ok = ((clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1]) & (classes >= 0)
          & (classes < num_classes) & ~record.difficult_flags() & np.isfinite(boxes).all(axis=1))
    return clipped[ok]


def input_box_sizes(records: Sequence[AnnotationRecord], num_classes: int, input_size: int,
                    resize: str) -> np.ndarray:
    """(N, 2) float64 widths and heights in input pixels of every valid box (`valid_boxes`), mapped as the pipeline
    maps them (config.data.resize to the square input side)."""
    from yolo_jax.data import letterbox as letterbox_lib  # noqa: PLC0415  (imports TF)

    sizes = [np.zeros((0, 2))]
    for r in records:
        boxes = valid_boxes(r, num_classes)
        if len(boxes):
            sx, sy, _, _ = letterbox_lib.resize_params(r.height, r.width, input_size, resize)
            sizes.append((boxes[:, 2:] - boxes[:, :2]) * np.array([sx, sy]))
    return np.concatenate(sizes)


def best_possible_recall(wh: np.ndarray, anchors: np.ndarray, threshold: float = ANCHOR_RATIO_THRESHOLD) -> float:
    """Fraction of boxes wh (N, 2) with an anchor (K, 2) whose width and height ratios r all satisfy
    max(r, 1 / r) < threshold (YOLOv5's autoanchor best-possible recall); nan for no boxes."""
    wh = np.asarray(wh, np.float64).reshape(-1, 2)
    if not len(wh):
        return float('nan')
    r = wh[:, None, :] / np.asarray(anchors, np.float64).reshape(1, -1, 2)
    worst = np.maximum(r, 1 / r).max(axis=2)  # (N, K): the worse of the two sides' ratios
    return float((worst.min(axis=1) < threshold).mean())


def anchor_coverage(wh: np.ndarray, anchors: Sequence) -> dict:
    """{'num_boxes', 'best_possible_recall', 'mean_best_iou'} of boxes wh (N, 2) input pixels (nan: no boxes)."""
    from yolo_jax.anchors import mean_best_iou  # noqa: PLC0415

    flat = np.asarray(anchors, np.float64).reshape(-1, 2)
    return {'num_boxes': int(len(wh)), 'best_possible_recall': best_possible_recall(wh, flat),
            'mean_best_iou': mean_best_iou(wh, flat) if len(wh) else float('nan')}


def find_duplicates(splits: Sequence[SplitRecords], *, max_bits: int = NEAR_HASH_BITS,
                    min_correlation: float = NEAR_CORRELATION) -> dict:
    """Duplicate images over all `splits` (the records with a fingerprint).

    Returns {'exact': [{'images': [{'split', 'image'}, ...], 'across_splits'}], 'near': [{'images': [a, b],
    'hamming', 'correlation', 'across_splits'}] (pairs whose digests differ), 'leaks': number of exact groups and
    near pairs across splits}.
    """
    items = [(s.split, r.path, f) for s in splits for r, f in zip(s.records, s.fingerprints, strict=True)
             if f is not None]
    by_digest: dict[str, list[int]] = {}
    for i, (_, _, f) in enumerate(items):
        by_digest.setdefault(f.digest, []).append(i)
    exact = []
    for members in by_digest.values():
        if len(members) > 1:
            exact.append({'images': [{'split': items[i][0], 'image': items[i][1]} for i in members],
                          'across_splits': len({items[i][0] for i in members}) > 1})
    near = []
    hashes = np.array([f.phash for _, _, f in items], np.uint64)
    for i, j, bits in hash_pairs(hashes, max_bits):
        fi, fj = items[i][2], items[j][2]
        if fi.digest == fj.digest:
            continue
        corr = thumb_correlation(fi.thumb, fj.thumb)
        if corr >= min_correlation:
            near.append({'images': [{'split': items[k][0], 'image': items[k][1]} for k in (i, j)], 'hamming': bits,
                         'correlation': round(corr, 4), 'across_splits': items[i][0] != items[j][0]})
    leaks = sum(g['across_splits'] for g in exact) + sum(p['across_splits'] for p in near)
    return {'exact': exact, 'near': near, 'leaks': int(leaks)}


def class_table(records: Sequence[AnnotationRecord], class_names: Sequence[str]) -> dict[str, dict[str, int]]:
    """{class name: {'images': images with at least one box of it, 'instances': its boxes}} (known ids only)."""
    out = {}
    for c, name in enumerate(class_names):
        per_image = [int((np.asarray(r.classes) == c).sum()) for r in records]
        out[name] = {'images': sum(n > 0 for n in per_image), 'instances': sum(per_image)}
    return out


def missing_common_classes(records: Sequence[AnnotationRecord], class_names: Sequence[str],
                           share: float = COMMON_CLASS_SHARE) -> dict[str, dict]:
    """{class name: {'share': the fraction of the images with boxes that have one of it, 'images': the paths of
    those that have none}} for each class with share >= `share` and < 1 (a hint, not a problem: such an image may
    be half labelled, or really lack the class). Images without any box are left out (`images_without_boxes`)."""
    labelled = [r for r in records if len(r.classes)]
    if not labelled:
        return {}
    k = len(class_names)  # (images, classes): whether the image has a box of the class
    present = np.stack([(np.asarray(r.classes)[:, None] == np.arange(k)).any(axis=0) for r in labelled])
    shares = present.mean(axis=0)
    return {name: {'share': round(float(shares[c]), 4),
                   'images': [r.path for r, has in zip(labelled, present[:, c], strict=True) if not has]}
            for c, name in enumerate(class_names) if share <= shares[c] < 1}


def _histogram(values: np.ndarray, edges: np.ndarray) -> dict:
    counts, _ = np.histogram(values, edges)
    return {'edges': [round(float(e), 4) for e in edges], 'counts': counts.tolist()}


SIZE_EDGES = np.geomspace(1, 2048, 34)  # sqrt(w * h) in input pixels
RATIO_EDGES = np.geomspace(1 / 16, 16, 33)  # w / h


def analyse(config, splits: Sequence[SplitRecords], class_names: Sequence[str], *, duplicates: bool = True) -> dict:
    """The report (see the module docstring) of splits read by `read_split` (and fingerprinted: `duplicates`)."""
    num_classes = len(class_names)
    size, resize = int(config.model.input_size), str(config.data.resize)
    report: dict[str, Any] = {
        'dataset': str(config.data.dataset), 'class_names': list(class_names), 'input_size': size,
        'resize': resize, 'anchors': [[list(a) for a in scale] for scale in config.model.anchors], 'splits': {},
    }
    for s in splits:
        issues = list(s.issues)
        for r, bw in zip(s.records, s.box_where, strict=True):
            issues.extend(box_issues(r, bw, num_classes, s.split))
        wh = input_box_sizes(s.records, num_classes, size, resize)
        no_boxes = [r.path for r in s.records if len(r.classes) == 0]
        report['splits'][s.split] = {
            'images': len(s.records),
            'instances': int(sum(len(r.classes) for r in s.records)),
            'difficult': int(sum(int(r.difficult_flags().sum()) for r in s.records)),
            'classes': class_table(s.records, class_names),
            'images_without_boxes': no_boxes,
            'missing_common_class': missing_common_classes(s.records, class_names),
            'issues': {kind: [i for i in issues if i['kind'] == kind] for kind in ISSUE_KINDS},
            'anchor_coverage': anchor_coverage(wh, config.model.anchors),
            'box_size_histogram': _histogram(np.sqrt(wh.prod(axis=1)), SIZE_EDGES),
            'aspect_ratio_histogram': _histogram(wh[:, 0] / np.maximum(wh[:, 1], 1e-12), RATIO_EDGES),
        }
    if duplicates:
        report['duplicates'] = find_duplicates(splits)
    return report


# ----------------------------------------------------------------------------------------------------------------
# Summaries and plots.


def summary_line(report: dict) -> str:
    """One line for a run's log: images / boxes per split, problems, duplicates and leaks, anchor coverage."""
    parts = [f"{name} {s['images']} images / {s['instances']} boxes" for name, s in report['splits'].items()]
    counts = {}
    for s in report['splits'].values():
        for kind, items in s['issues'].items():
            counts[kind] = counts.get(kind, 0) + len(items)
    problems = ', '.join(f'{n} {k}' for k, n in counts.items() if n) or 'no problems'
    text = f"data check: {'; '.join(parts)}; {problems}"
    missing = [f"{len(m['images'])} {split} images without {name}" for split, s in report['splits'].items()
               for name, m in s['missing_common_class'].items()]
    if missing:
        text += f"; possibly half labelled ({', '.join(missing)}, a class in >= {COMMON_CLASS_SHARE:.0%} of them)"
    dup = report.get('duplicates')
    if dup is not None:
        text += (f"; duplicate images: {len(dup['exact'])} exact groups, {len(dup['near'])} near pairs, "
                 f"{dup['leaks']} across splits")
    cov = report['splits'].get('train', next(iter(report['splits'].values()), None))
    if cov is not None:
        a = cov['anchor_coverage']
        text += (f"; anchors: best-possible recall {a['best_possible_recall']:.3f}, mean best IoU "
                 f"{a['mean_best_iou']:.3f}")
    return text


def summary_text(report: dict) -> str:
    """The printed summary: per split counts, per class table, problems (the first few of each kind), duplicates,
    anchor coverage."""
    lines = [f"data set {report['dataset']}: {len(report['class_names'])} classes"]
    for name, s in report['splits'].items():
        a = s['anchor_coverage']
        lines.append(f"{name}: {s['images']} images, {s['instances']} boxes ({s['difficult']} difficult), "
                     f"{len(s['images_without_boxes'])} images without boxes; anchors: best-possible recall "
                     f"{a['best_possible_recall']:.3f}, mean best IoU {a['mean_best_iou']:.3f} "
                     f"({a['num_boxes']} boxes)")
        lines.append('  ' + ', '.join(f"{c} {v['instances']}/{v['images']}" for c, v in s['classes'].items())
                     + '  (instances/images per class)')
        for c, m in s['missing_common_class'].items():
            n = len(m['images'])
            lines.append(f"  possibly half labelled: {n} images with boxes have no {c}, a class in {m['share']:.1%} "
                         'of them (or they really lack it):')
            lines.append('    ' + ', '.join(Path(p).name for p in m['images'][:SUMMARY_LISTED])
                         + (f' ... and {n - SUMMARY_LISTED} more (report.json)' if n > SUMMARY_LISTED else ''))
        for kind, items in s['issues'].items():
            if items:
                lines.append(f'  {len(items)} {kind}:')
                lines.extend(f"    {i['where']}: {i['detail']}" for i in items[:SUMMARY_LISTED])
                if len(items) > SUMMARY_LISTED:
                    lines.append(f'    ... and {len(items) - SUMMARY_LISTED} more (report.json)')
    dup = report.get('duplicates')
    if dup is not None:
        lines.append(f"duplicate images: {len(dup['exact'])} exact groups, {len(dup['near'])} near pairs; "
                     f"{dup['leaks']} across splits")
        for g in (dup['exact'] + dup['near'])[:SUMMARY_LISTED]:
            tag = 'LEAK ' if g['across_splits'] else ''
            lines.append(f"  {tag}" + ' = '.join(f"{m['split']}:{m['image']}" for m in g['images']))
    return '\n'.join(lines)


def write_plots(report: dict, out_dir: Path) -> list[Path]:
    """classes.png, box_sizes.png, aspect_ratios.png (matplotlib, Agg) from the report's tables; returns paths."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # noqa: PLC0415

    splits = report['splits']
    names = report['class_names']
    paths = []
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(names) + 2), 4))
    width = 0.8 / max(len(splits), 1)
    for k, (split, s) in enumerate(splits.items()):
        ax.bar(np.arange(len(names)) + k * width, [s['classes'][c]['instances'] for c in names], width, label=split)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=45 if len(names) > 8 else 0, ha='right')
    ax.set_ylabel('instances')
    ax.legend()
    ax.set_title('instances per class')
    paths.append(out_dir / 'classes.png')
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    anchors = np.asarray(report['anchors'], np.float64).reshape(-1, 2)
    for key, fname, xlabel, marks in (
            ('box_size_histogram', 'box_sizes.png', f"sqrt(w * h), input pixels ({report['resize']} to "
             f"{report['input_size']}); dashed: anchors", np.sqrt(anchors.prod(axis=1))),
            ('aspect_ratio_histogram', 'aspect_ratios.png', 'w / h (input pixels)', None)):
        fig, ax = plt.subplots(figsize=(7, 4))
        for split, s in splits.items():
            h = s[key]
            ax.stairs(h['counts'], h['edges'], label=split)
        if marks is not None:
            for m in marks:
                ax.axvline(m, color='grey', linestyle='--', linewidth=0.8)
        ax.set_xscale('log')
        ax.set_xlabel(xlabel)
        ax.set_ylabel('boxes')
        ax.legend()
        paths.append(out_dir / fname)
        fig.tight_layout()
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def _json_safe(x: Any) -> Any:
    """nan -> None (JSON has no NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


# ----------------------------------------------------------------------------------------------------------------
# Entry points.


def check_data(config, splits: Sequence[str] = ('train', 'test'), *, output: str | os.PathLike | None = None,
               fingerprints: bool = True) -> dict:
    """Reads, fingerprints and analyses `splits` of config.data.dataset; with `output`, writes report.json and the
    plots there. Returns the report (with 'seconds': the wall time)."""
    from yolo_jax.data import sources  # noqa: PLC0415

    start = time.monotonic()
    class_names = sources.get_class_names(config)
    read = []
    for split in splits:
        s = read_split(config, split, class_names)
        if fingerprints:
            fingerprint_files(s)
        read.append(s)
    report = analyse(config, read, class_names, duplicates=fingerprints)
    report['seconds'] = round(time.monotonic() - start, 2)
    if output is not None:
        out_dir = Path(output)
        out_dir.mkdir(parents=True, exist_ok=True)
        annotations_lib.write_text_atomic(out_dir / 'report.json',
                                          json.dumps(_json_safe(report), indent=1) + '\n')
        write_plots(report, out_dir)
    return report


def check_at_start(config, data: Any, log: Callable[[str], None] = logging.info) -> dict | None:
    """The start-of-run check (config.data.check_at_start): the run's own decoded splits ('train', 'test' of
    `data`, an input_pipeline.Data) read once (with config.data.cache that pass fills the cache the first epoch
    reads), fingerprinted from their pixels and analysed; logs `summary_line` and a warning per leak (the first
    few). Skipped (None) with several processes: each holds only its shard (run `python -m yolo_jax.data.check`)."""
    import tensorflow_datasets as tfds  # noqa: PLC0415

    if data.process_count > 1:
        log('data check skipped: each process reads only its shard (run python -m yolo_jax.data.check)')
        return None
    start = time.monotonic()
    read = [read_elements(tfds.as_numpy(data.split(name)[0]), name) for name in ('train', 'test')]
    report = analyse(config, read, data.class_names)
    report['seconds'] = round(time.monotonic() - start, 2)
    log(f"{summary_line(report)} ({report['seconds']:.1f} s; config.data.check_at_start)")
    dup = report['duplicates']
    leaks = [g for g in dup['exact'] + dup['near'] if g['across_splits']]
    for g in leaks[:SUMMARY_LISTED]:
        logging.warning('the same image is in several splits (a leak: test figures will be inflated): %s',
                        ' = '.join(f"{m['split']}:{m['image']}" for m in g['images']))
    if len(leaks) > SUMMARY_LISTED:
        logging.warning('... and %d more leaks (python -m yolo_jax.data.check lists all)', len(leaks) - SUMMARY_LISTED)
    return report


# ----------------------------------------------------------------------------------------------------------------
# Command line.


def _define_flags() -> None:
    """check's own flags (cli.run adds --config and --verbose)."""
    flags.DEFINE_string('output', None, 'Write report.json and the plots (PNG) into this folder.')
    flags.DEFINE_list('splits', ['train', 'test'], "Splits to check: 'train', 'test' (or TFDS split names).")


def main() -> None:
    """`python -m yolo_jax.data.check --config=... [--output=DIR] [--splits=train,test]` (cli.run)."""
    f = flags.FLAGS
    if not f.splits:
        raise errors.FlagError('--splits: name at least one split')
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TF's first import
    from yolo_jax import run_config  # noqa: PLC0415

    report = check_data(run_config.resolve(f.config, ''), tuple(f.splits), output=f.output)
    print(summary_text(report))
    print(f"checked in {report['seconds']:.1f} s" + (f'; wrote {f.output}/report.json and plots' if f.output else ''))


if __name__ == '__main__':
    from yolo_jax import cli  # noqa: PLC0415

    cli.run(main, _define_flags)
