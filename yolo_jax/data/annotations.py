"""The TF2 reference's annotation text format: reading with validation, and exporting a dataset to it.

Annotation file: one image per line, `path x1,y1,x2,y2,cls [x1,y1,x2,y2,cls ...]`, integers, boxes in pixels of that
image (x2 > x1, y2 > y1; x2, y2 exclusive as in the generator, so x2 <= width), cls a 0-based index into the
class-names file (one name per line). A relative path is taken relative to the annotation file's folder, or, if no
such file exists, relative to the working directory (how the reference's own files were written). The path may
contain spaces: it runs up to the first whitespace-separated token that contains a comma. Blank lines and lines
starting with '#' are skipped.

Problems are reported with `<file>:<line>`: errors (missing or unreadable image, non-integer field, wrong field
count, empty box, unknown class) raise one `AnnotationError` listing every bad line; boxes reaching outside the
image are clipped to it with an `AnnotationWarning`, and dropped (with a warning) if nothing is left. A file with
no image lines (or none with boxes) is an error too. Every image is decoded in full while checking, with the
decoder the input pipeline uses (TF for JPEG/PNG/BMP/GIF, PIL otherwise), so a truncated or corrupt image is
rejected here, naming its line, rather than minutes later inside tf.data.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ml_collections
import numpy as np
from absl import logging

from yolo_jax.data import decode
from yolo_jax.data.source_base import FileSource
from yolo_jax.errors import ConfigError, DataError, summarize

# Formats the input pipeline decodes with TF (sources.annotation_records_dataset); PIL decodes the others.
TF_IMAGE_FORMATS = decode.TF_IMAGE_FORMATS  # decoded by TensorFlow everywhere (data/decode.py)


class AnnotationError(DataError):
    """A malformed annotation or class-names file; the message names file and line number (a ValueError)."""


class AnnotationWarning(UserWarning):
    """A fixable annotation problem (box clipped to the image or dropped); the message names file and line."""


@dataclasses.dataclass(frozen=True)
class AnnotationRecord:
    """One validated line.

    Attributes:
        path: the image file (resolved).
        boxes: (N, 4) int32 x1, y1, x2, y2 in pixels, clipped to the image.
        classes: (N,) int32 class ids.
        width: image width in pixels.
        height: image height in pixels.
        line: 1-based line number in the annotation file (COCO JSON: the image id; YOLO txt: the image's index).
        image_format: the image's format as PIL names it ('JPEG', 'PNG', ...).
        num_bytes: the image file's size when it was checked (-1: unknown); the input pipeline fails, naming the
            file, if it has changed since.
        difficult: optional (N,) bool: boxes to be ignored by evaluation and training (VOC difficult, COCO
            iscrowd); None = none. COCO-JSON and YOLO-txt records hold float32 boxes (sub-pixel corners).
        truncated: optional (N,) bool: VOC's `truncated` (the object continues beyond the image); informational.
    """

    path: str
    boxes: np.ndarray
    classes: np.ndarray
    width: int
    height: int
    line: int
    image_format: str
    num_bytes: int = -1
    difficult: np.ndarray | None = None
    truncated: np.ndarray | None = None

    def difficult_flags(self) -> np.ndarray:
        """(N,) bool: `difficult`, or all False."""
        if self.difficult is None:
            return np.zeros(len(self.classes), bool)
        return np.asarray(self.difficult, bool).reshape(-1)


def read_class_names(path: str | os.PathLike) -> tuple[str, ...]:
    """Reads a class-names file: one name per line (surrounding whitespace stripped; trailing blank lines ignored).

    Raises:
        AnnotationError: missing file, not UTF-8, no names, a blank line between names, or a duplicated name.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f'{path}: class-names file not found')
    try:
        lines = path.read_text(encoding='utf-8').splitlines()
    except UnicodeDecodeError as e:
        raise AnnotationError(f'{path}: not a UTF-8 text file ({e.reason} at byte {e.start})') from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = [ln.strip() for ln in lines]
    if not names:
        raise AnnotationError(f'{path}: no class names')
    for i, name in enumerate(names):
        if not name:
            raise AnnotationError(f'{path}:{i + 1}: blank class name (it would shift every later class id)')
        if name in names[:i]:
            raise AnnotationError(f'{path}:{i + 1}: duplicate class name {name!r}')
    return tuple(names)


def decode_problem(record: AnnotationRecord) -> str | None:
    """Decodes the record's image in full, as the input pipeline will; None if fine, else what is wrong."""
    if record.image_format in TF_IMAGE_FORMATS:
        import tensorflow as tf  # noqa: PLC0415  (only when checking: reading annotations needs no TF)

        try:
            image = tf.io.decode_image(tf.io.read_file(record.path), channels=3, expand_animations=False)
        except (tf.errors.OpError, ValueError) as e:
            return f'unreadable image {record.path}: {decode.tf_error_text(e)}'
        height, width = int(image.shape[0]), int(image.shape[1])
    else:
        from PIL import Image  # noqa: PLC0415

        try:
            with Image.open(record.path) as im:
                im.load()
                width, height = im.size
        except Exception as e:  # noqa: BLE001 - any PIL failure means unreadable
            return f'unreadable image {record.path}: {e}'
    if (width, height) != (record.width, record.height):
        return (
            f'image {record.path} decodes to {width}x{height} pixels but its header says '
            f'{record.width}x{record.height}'
        )
    return None


def _decode_problems(records: Sequence[AnnotationRecord]) -> list[str | None]:
    """decode_problem for every record, a few at a time (decoders release the GIL)."""
    if len(records) <= 1:
        return [decode_problem(r) for r in records]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(decode_problem, records))


def _resolve_image(token: str, base: Path) -> Path:
    p = Path(token).expanduser()
    if p.is_absolute():
        return p
    beside = base / p
    return beside if beside.exists() or not p.exists() else p


def read_annotations(
    path: str | os.PathLike,
    class_names: Sequence[str] | int,
    *,
    keep_empty: bool = False,
) -> list[AnnotationRecord]:
    """Reads and validates an annotation file (see the module docstring).

    Args:
        path: the annotation text file.
        class_names: the class names, or just their number; class ids must lie in [0, len).
        keep_empty: keep images without boxes (after clipping). The reference skips them; so does this by default,
            with a warning.

    Returns:
        The records of the kept lines, in file order.

    Raises:
        AnnotationError: listing every bad line as `<file>:<line>: <problem>` (the first 20, then a count), or
            saying that the file holds no images (with boxes, unless keep_empty).
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f'{path}: annotation file not found')
    num_classes = class_names if isinstance(class_names, int) else len(class_names)
    base = path.resolve().parent
    records: list[AnnotationRecord] = []
    errors: list[tuple[int, str]] = []
    lines = skipped = 0
    try:
        text_lines = path.read_text(encoding='utf-8').splitlines()
    except UnicodeDecodeError as e:
        raise AnnotationError(f'{path}: not a UTF-8 text file ({e.reason} at byte {e.start})') from None
    for number, raw in enumerate(text_lines, start=1):
        text = raw.strip()
        if not text or text.startswith('#'):
            continue
        lines += 1
        where = f'{path}:{number}'
        try:
            record = _parse_line(text, where, base, num_classes, number)
        except AnnotationError as e:
            errors.append((number, str(e)))
            continue
        if len(record.classes) == 0 and not keep_empty:
            warnings.warn(f'{where}: no boxes; image skipped', AnnotationWarning, stacklevel=2)
            skipped += 1
            continue
        records.append(record)
    for record, problem in zip(records, _decode_problems(records), strict=True):
        if problem:
            errors.append((record.line, f'{path}:{record.line}: {problem}'))
    if errors:
        messages = [m for _, m in sorted(errors, key=lambda e: e[0])]
        raise AnnotationError(summarize(messages, f'{len(errors)} bad annotation line(s) in {path}:'))
    if not lines:
        raise AnnotationError(f'no images in {path}: the annotation file has no `path x1,y1,x2,y2,cls ...` lines')
    if not records:
        raise AnnotationError(f'no images with boxes in {path}: all {skipped} lines have none (or only boxes outside '
                              'their image)')
    logging.info('Read %d annotated images from %s', len(records), path)
    return records


def _parse_line(text: str, where: str, base: Path, num_classes: int, number: int) -> AnnotationRecord:
    tokens = text.split()
    first_box = next((i for i, t in enumerate(tokens) if i > 0 and ',' in t), len(tokens))
    if first_box == len(tokens):
        path_text, box_tokens = text, []
    else:
        path_text = text[: text.index(tokens[first_box], len(tokens[0]))].strip()
        box_tokens = tokens[first_box:]
    image = _resolve_image(path_text, base)
    if not image.is_file():
        if ' ' in path_text and _resolve_image(tokens[0], base).is_file():
            raise AnnotationError(f'{where}: boxes must be written x1,y1,x2,y2,cls (comma-separated, no spaces)')
        raise AnnotationError(f'{where}: image not found: {path_text}')
    try:
        width, height, image_format = decode.header(image)
    except Exception as e:  # noqa: BLE001 - any PIL failure means unreadable
        raise AnnotationError(f'{where}: unreadable image {image}: {e}') from e

    boxes, classes = [], []
    for k, token in enumerate(box_tokens, start=1):
        fields = token.split(',')
        if len(fields) != 5:
            raise AnnotationError(f'{where}: box {k} {token!r} has {len(fields)} fields, expected x1,y1,x2,y2,cls')
        try:
            x1, y1, x2, y2, cls = (int(f) for f in fields)
        except ValueError:
            raise AnnotationError(f'{where}: box {k} {token!r} has a non-integer field') from None
        if x2 <= x1 or y2 <= y1:
            raise AnnotationError(f'{where}: box {k} {token!r} is empty (needs x2 > x1 and y2 > y1)')
        if not 0 <= cls < num_classes:
            raise AnnotationError(f'{where}: box {k} {token!r}: class id {cls} not in [0, {num_classes})')
        cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            if cx2 <= cx1 or cy2 <= cy1:
                warnings.warn(
                    f'{where}: box {k} {token!r} lies outside the {width}x{height} image; dropped',
                    AnnotationWarning,
                    stacklevel=4,
                )
                continue
            warnings.warn(
                f'{where}: box {k} {token!r} reaches outside the {width}x{height} image; clipped to '
                f'{cx1},{cy1},{cx2},{cy2}',
                AnnotationWarning,
                stacklevel=4,
            )
        boxes.append((cx1, cy1, cx2, cy2))
        classes.append(cls)
    return AnnotationRecord(
        path=str(image),
        boxes=np.asarray(boxes, np.int32).reshape(-1, 4),
        classes=np.asarray(classes, np.int32),
        width=width,
        height=height,
        line=number,
        image_format=image_format,
        num_bytes=image.stat().st_size,
    )


# ----------------------------------------------------------------------------------------------------------------
# The data source.


def config_class_names(config: ml_collections.ConfigDict, dataset: str) -> tuple[tuple[str, ...], str]:
    """(names in config.data.class_names, where they come from); ConfigError naming the field when it is empty."""
    if not config.data.class_names:
        raise ConfigError(f'config.data.class_names: dataset={dataset!r} needs a class-names file')
    return read_class_names(config.data.class_names), f'config.data.class_names ({config.data.class_names})'


class AnnotationsSource(FileSource):
    """config.data.dataset='annotations': config.data.<split>_annotations text files (lines without boxes are
    skipped, as upstream) and config.data.class_names."""

    name = 'annotations'
    field, field_help = 'annotations', 'an annotation file'

    def class_names(self, config: ml_collections.ConfigDict) -> tuple[tuple[str, ...], str]:
        return config_class_names(config, self.name)

    def records(self, config: ml_collections.ConfigDict, split: str) -> tuple[list[AnnotationRecord], tuple[str, ...]]:
        names = self.class_names(config)[0]
        return read_annotations(self.split_path(config, split), names), names


SOURCE = AnnotationsSource()


# ----------------------------------------------------------------------------------------------------------------
# Writing.


def format_line(path: str, boxes: np.ndarray, classes: np.ndarray) -> str:
    """`path x1,y1,x2,y2,cls ...` for integer pixel boxes (N, 4) xyxy (floats are rounded) and classes (N,)."""
    later = path.split()[1:]
    if any(c in path for c in '\t\r\n') or any(',' in t for t in later):
        raise ValueError(f'image path {path!r}: tabs, newlines or a comma after a space cannot be read back')
    boxes = np.rint(np.asarray(boxes, np.float64)).astype(np.int64).reshape(-1, 4)
    classes = np.asarray(classes, np.int64).reshape(-1)
    parts = [path] + [f'{a},{b},{c},{d},{k}' for (a, b, c, d), k in zip(boxes, classes, strict=True)]
    return ' '.join(parts)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are ordinary files, readable like the pictures
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_dataset(
    examples: Iterable[Mapping[str, np.ndarray]],
    out_dir: str | os.PathLike,
    class_names: Sequence[str],
    *,
    image_format: str = 'png',
    overwrite: bool = False,
) -> Path:
    """Exports detection examples to image files plus the reference's annotation text, atomically.

    Layout: `out_dir/images/000000.<ext>`, `out_dir/annotations.txt` (paths relative to it) and
    `out_dir/classes.txt`. Everything is written into a temporary sibling folder that is renamed to `out_dir` only
    when complete, so an interrupted export leaves no half-written `out_dir`.

    Args:
        examples: mappings with 'image' (H, W, 3) uint8 RGB, 'boxes' (N, 4) xyxy pixels (rounded to integers) and
            'classes' (N,) ints — e.g. numpy elements of `sources.load_split`.
        out_dir: the folder to create.
        class_names: written to classes.txt.
        image_format: 'png' (lossless) or 'jpg' (quality 95).
        overwrite: replace an existing `out_dir` (else FileExistsError).

    Returns:
        The path of annotations.txt.
    """
    from PIL import Image

    ext = {'png': 'png', 'jpg': 'jpg', 'jpeg': 'jpg'}.get(image_format.lower())
    if ext is None:
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f'{out_dir} exists; pass overwrite=True to replace it')
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out_dir.name}.', suffix='.tmp', dir=out_dir.parent))
    try:
        (tmp / 'images').mkdir()
        lines = []
        for i, ex in enumerate(examples):
            image = np.asarray(ex['image'], np.uint8)
            rel = f'images/{i:06d}.{ext}'
            kwargs = {'quality': 95} if ext == 'jpg' else {}
            Image.fromarray(image).save(tmp / rel, **kwargs)
            lines.append(format_line(rel, ex['boxes'], ex['classes']))
            if (i + 1) % 500 == 0:
                logging.info('Exported %d images to %s', i + 1, out_dir)
        (tmp / 'annotations.txt').write_text(''.join(ln + '\n' for ln in lines), encoding='utf-8')
        (tmp / 'classes.txt').write_text(''.join(n + '\n' for n in class_names), encoding='utf-8')
        if out_dir.exists():
            old = out_dir.with_name(f'.{out_dir.name}.old-{os.getpid()}')
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logging.info('Exported %d images with annotations to %s', len(lines), out_dir)
    return out_dir / 'annotations.txt'
