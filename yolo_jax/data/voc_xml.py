"""Pascal VOC XML annotations as labelling tools write them (LabelImg, CVAT, Roboflow): one XML file per image.

Layouts (`find_layout`):
    devkit   ROOT/Annotations/*.xml, ROOT/JPEGImages/*, optional ROOT/ImageSets/Main/<split>.txt (one image id per
             line: the XML's stem). CVAT writes this layout with ImageSets/Main/default.txt (no train/test split).
    sibling  ROOT/annotations/*.xml and ROOT/images/* (folder names in any case).
    flat     ROOT/*.xml beside the images, or beside nothing when the image folder is given (config.data.image_dir).

The image of an XML file is its `filename` (or that name's last component) in the image folder(s), else the XML's
own stem with a common image extension (tools disagree on `filename`: some write a path, some an old name).

Per object: `name` (the class), `bndbox` xmin, ymin, xmax, ymax (pixels, numbers; VOC's 1-based corners are
kept as they are, as TFDS's voc builder does), `difficult` (0/1: kept and flagged, so that evaluation ignores it as
the VOC protocol does and training drops it) and `truncated` (0/1, informational: records' `truncated`).

Classes: the names in a class-names file (config.data.class_names: one per line, their order the class ids; an
object of another name is an error), else the sorted set of names in every XML file of the set (all splits, so
train and test agree).

Problems. What loses nothing is fixed with one `AnnotationWarning` naming every file: a box reaching over the
image border is clipped to it, a box with zero width or height (a click without a drag; BCCD has two) is dropped.
Everything else is an error, and every error of the set is listed, by file and reason, in ONE `VocXmlError`
before any training: malformed XML, missing `filename`/`name`/`bndbox` or non-numeric corners, xmax < xmin or
ymax < ymin (swapped corners), a box with no area inside the image (wholly outside: wrong image or size), the
image missing or unreadable, a `size` that differs from the image's, an unknown class (with a names file), a
`difficult`/`truncated` value other than 0/1.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import logging

from yolo_jax.data import decode
from yolo_jax.data.annotations import AnnotationError, AnnotationRecord, AnnotationWarning, _decode_problems
from yolo_jax.data.yolo_txt import IMAGE_EXTENSIONS
from yolo_jax.errors import summarize


class VocXmlError(AnnotationError):
    """Bad VOC XML annotations; the message lists every bad file with the reason."""


@dataclasses.dataclass(frozen=True)
class VocObject:
    """One `<object>`: class name, box float (4,) x1, y1, x2, y2 pixels as written, difficult and truncated."""

    name: str
    box: tuple[float, float, float, float]
    difficult: bool
    truncated: bool


@dataclasses.dataclass(frozen=True)
class VocFile:
    """One parsed XML file: `filename` ('' if absent), `size` (width, height; 0 = not written) and objects."""

    path: Path
    filename: str
    width: int
    height: int
    objects: tuple[VocObject, ...]


@dataclasses.dataclass(frozen=True)
class VocLayout:
    """Where a VOC set's files are.

    kind: 'devkit', 'sibling' or 'flat'.
    annotations: the folder of XML files.
    image_dirs: folders searched for each XML's image, in order.
    split_dir: ImageSets/Main of a devkit (None otherwise).
    """

    kind: str
    annotations: Path
    image_dirs: tuple[Path, ...]
    split_dir: Path | None = None

    def split_names(self) -> tuple[str, ...]:
        """The split files of ImageSets/Main (stems, sorted); () when there are none."""
        if self.split_dir is None or not self.split_dir.is_dir():
            return ()
        return tuple(sorted(p.stem for p in self.split_dir.glob('*.txt') if '_' not in p.stem))


def _child(folder: Path, *names: str) -> Path | None:
    """The sub-folder of `folder` whose name equals one of `names` ignoring case (first match in `names` order)."""
    if not folder.is_dir():
        return None
    children = {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_dir()}
    return next((children[n.lower()] for n in names if n.lower() in children), None)


def xml_files(folder: Path) -> list[Path]:
    """The *.xml files directly in `folder` (any case of the extension), sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == '.xml')


def find_layout(root: str | os.PathLike, image_dir: str | os.PathLike = '') -> VocLayout | None:
    """The VOC layout of folder `root` (see the module docstring), or None when it holds no VOC XML files.

    image_dir: the image folder of a flat folder of XML files ('' = the XML files' own folder).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        return None
    extra = (Path(image_dir).expanduser(),) if image_dir else ()
    annotations = _child(root, 'Annotations')
    if annotations is not None and xml_files(annotations):
        jpeg = _child(root, 'JPEGImages')
        if jpeg is not None:
            main = _child(_child(root, 'ImageSets') or root / '-', 'Main')
            return VocLayout('devkit', annotations, extra + (jpeg,), main)
        images = _child(root, 'images', 'imgs')
        return VocLayout('sibling', annotations, extra + ((images,) if images else ()) + (annotations,))
    if xml_files(root):
        return VocLayout('flat', root, extra + (root,))
    return None


def _text(element: ET.Element, tag: str) -> str | None:
    child = element.find(tag)
    return None if child is None or child.text is None else child.text.strip()


def _flag(element: ET.Element, tag: str, where: str) -> bool:
    text = _text(element, tag)
    if text in (None, '', '0', 'false', 'False'):
        return False
    if text in ('1', 'true', 'True'):
        return True
    raise VocXmlError(f'{where}: <{tag}> must be 0 or 1, got {text!r}')


def _number(text: str | None) -> float | None:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def parse_file(path: str | os.PathLike) -> VocFile:
    """Parses one VOC XML file without looking at its image.

    Raises:
        VocXmlError: naming the file (and object number): not XML, not an <annotation>, a missing name / bndbox,
            non-numeric corners, swapped corners, a difficult/truncated value other than 0/1.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise VocXmlError(f'{path}: malformed XML ({e})') from None
    if root.tag != 'annotation':
        raise VocXmlError(f'{path}: not a VOC annotation (root element <{root.tag}>, expected <annotation>)')
    width = _number(_text(root, 'size/width')) or 0
    height = _number(_text(root, 'size/height')) or 0
    objects = []
    for k, obj in enumerate(root.findall('object'), start=1):
        where = f'{path}: object {k}'
        name = _text(obj, 'name')
        if not name:
            raise VocXmlError(f'{where}: no <name> (class)')
        where = f'{where} ({name})'
        box = obj.find('bndbox')
        if box is None:
            raise VocXmlError(f'{where}: no <bndbox>')
        corners = [_number(_text(box, t)) for t in ('xmin', 'ymin', 'xmax', 'ymax')]
        if any(c is None for c in corners):
            raise VocXmlError(f'{where}: <bndbox> needs numeric xmin, ymin, xmax, ymax, got '
                              f'{[_text(box, t) for t in ("xmin", "ymin", "xmax", "ymax")]}')
        x1, y1, x2, y2 = corners  # type: ignore[misc]
        if x2 < x1 or y2 < y1:
            raise VocXmlError(f'{where}: box {x1:g},{y1:g},{x2:g},{y2:g} has xmax < xmin or ymax < ymin '
                              '(swapped corners?)')
        objects.append(VocObject(name, (x1, y1, x2, y2), _flag(obj, 'difficult', where),
                                 _flag(obj, 'truncated', where)))
    return VocFile(path, _text(root, 'filename') or '', int(width), int(height), tuple(objects))


def find_image(voc: VocFile, image_dirs: Sequence[Path]) -> Path | None:
    """The image of `voc`: its filename (as written, then its last component) in each folder, then the XML's stem
    with each extension of IMAGE_EXTENSIONS (lower and upper case)."""
    names = []
    if voc.filename:
        names += [voc.filename, Path(voc.filename.replace('\\', '/')).name]
    names += [voc.path.stem + ext for e in IMAGE_EXTENSIONS for ext in (e, e.upper())]
    for folder in image_dirs:
        for name in names:
            candidate = folder / name
            if candidate.is_file() and candidate.suffix.lower() != '.xml':
                return candidate
    return None


def class_names_of(files: Sequence[VocFile]) -> tuple[str, ...]:
    """The sorted set of object names in `files`."""
    return tuple(sorted({o.name for f in files for o in f.objects}))


def parse_files(paths: Sequence[Path]) -> tuple[list[VocFile], list[str]]:
    """(the files that parse, one error line per file that does not)."""
    parsed, errors = [], []
    for p in paths:
        try:
            parsed.append(parse_file(p))
        except VocXmlError as e:
            errors.append(str(e))
        except OSError as e:
            errors.append(f'{p}: unreadable ({e.strerror or e})')
    return parsed, errors


def read_voc_xml(
    paths: Sequence[str | os.PathLike],
    image_dirs: Sequence[str | os.PathLike],
    class_names: Sequence[str] | None = None,
) -> tuple[list[AnnotationRecord], tuple[str, ...]]:
    """Reads and validates VOC XML files (see the module docstring).

    Args:
        paths: the XML files, in the order of the records.
        image_dirs: folders searched for each file's image (find_image).
        class_names: the class names (their order = the class ids); None = the sorted names found in `paths`.

    Returns:
        (one record per XML file: float32 (N, 4) x1, y1, x2, y2 pixel boxes clipped to the image, int32 classes,
        `difficult` and `truncated` (N,) bool, `line` = the file's index in `paths`; the class names).

    Raises:
        VocXmlError: one error listing every bad file with the reason (the first 20, then a count).
    """
    files, errors = parse_files([Path(p) for p in paths])
    names = tuple(class_names) if class_names is not None else class_names_of(files)
    class_of = {n: k for k, n in enumerate(names)}
    dirs = [Path(d) for d in image_dirs]
    records, fixed = [], []
    for index, voc in enumerate(files):
        try:
            record, notes = _record(voc, index, dirs, class_of)
        except VocXmlError as e:
            errors.append(str(e))
            continue
        records.append(record)
        fixed += notes
    # Every image decoded in full now, by the decoder training uses, not in the first batch.
    errors += [f'{voc.path}: {problem}' for voc, problem in
               zip([files[r.line] for r in records], _decode_problems(records), strict=True) if problem]
    if errors:
        raise VocXmlError(summarize(errors, f'{len(errors)} bad VOC XML annotation file(s):'))
    if not records:
        raise VocXmlError('no VOC XML annotation files given')
    if fixed:
        warnings.warn(summarize(fixed, f'{len(fixed)} VOC box(es) fixed:'), AnnotationWarning, stacklevel=2)
    logging.info('Read %d images, %d boxes, %d classes from VOC XML files (e.g. %s)', len(records),
                 sum(len(r.classes) for r in records), len(names), files[0].path)
    return records, names


def _record(voc: VocFile, index: int, image_dirs: Sequence[Path],
            class_of: dict[str, int]) -> tuple[AnnotationRecord, list[str]]:
    """The record of one parsed file and the notes on boxes clipped or dropped; raises VocXmlError."""
    image = find_image(voc, image_dirs)
    if image is None:
        where = ', '.join(str(d) for d in image_dirs)
        raise VocXmlError(f'{voc.path}: image not found: {voc.filename or voc.path.stem + ".*"} (looked in {where})')
    try:
        width, height, image_format = decode.header(image)
    except Exception as e:  # noqa: BLE001 - any PIL failure means unreadable
        raise VocXmlError(f'{voc.path}: unreadable image {image}: {e}') from None
    if voc.width and voc.height and (voc.width, voc.height) != (width, height):
        raise VocXmlError(f'{voc.path}: <size> says {voc.width}x{voc.height} but {image} is {width}x{height}')
    boxes, classes, difficult, truncated, notes = [], [], [], [], []
    for k, obj in enumerate(voc.objects, start=1):
        where = f'{voc.path}: object {k} ({obj.name})'
        if obj.name not in class_of:
            raise VocXmlError(f'{where}: unknown class {obj.name!r} (not in config.data.class_names)')
        x1, y1, x2, y2 = obj.box
        shown = f'{x1:g},{y1:g},{x2:g},{y2:g}'
        if x2 == x1 or y2 == y1:
            notes.append(f'{where}: box {shown} has no area; dropped')
            continue
        cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
        if cx2 <= cx1 or cy2 <= cy1:
            raise VocXmlError(f'{where}: box {shown} lies outside the {width}x{height} image {image.name}')
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            notes.append(f'{where}: box {shown} reaches outside the {width}x{height} image; clipped to '
                         f'{cx1:g},{cy1:g},{cx2:g},{cy2:g}')
        boxes.append((cx1, cy1, cx2, cy2))
        classes.append(class_of[obj.name])
        difficult.append(obj.difficult)
        truncated.append(obj.truncated)
    record = AnnotationRecord(
        path=str(image),
        boxes=np.asarray(boxes, np.float64).reshape(-1, 4).astype(np.float32),
        classes=np.asarray(classes, np.int32),
        width=width,
        height=height,
        line=index,
        image_format=image_format,
        num_bytes=image.stat().st_size,
        difficult=np.asarray(difficult, bool),
        truncated=np.asarray(truncated, bool),
    )
    return record, notes


def split_ids(layout: VocLayout, split_name: str) -> list[str]:
    """Image ids (XML stems) listed in a devkit's ImageSets/Main/<split_name>.txt, in file order."""
    assert layout.split_dir is not None
    path = layout.split_dir / f'{split_name}.txt'
    ids = [ln.split()[0] for ln in path.read_text(encoding='utf-8').splitlines() if ln.strip()]
    if not ids:
        raise VocXmlError(f'{path}: no image ids')
    return ids


def split_files(layout: VocLayout, split_name: str) -> list[Path]:
    """The XML files of a devkit split; an id without an XML file is an error listing every such id."""
    ids = split_ids(layout, split_name)
    paths = [layout.annotations / f'{i}.xml' for i in ids]
    missing = [f'{layout.split_dir / (split_name + ".txt")}: {i}: no {p}' for i, p in zip(ids, paths, strict=True)
               if not p.is_file()]
    if missing:
        raise VocXmlError(summarize(missing, f'{len(missing)} image id(s) without an annotation file:'))
    return paths
