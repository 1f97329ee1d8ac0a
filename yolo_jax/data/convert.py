"""Converts detection data between the formats this project reads.

    python -m yolo_jax.data.convert --from=coco_json --input=instances.json --images=img/ --to=yolo_txt --output=OUT
    python -m yolo_jax.data.convert --from=yolo_txt --input=data/images/train --class_names=names.txt \
        --to=coco_json --output=OUT
    python -m yolo_jax.data.convert --from=annotations --input=train.txt --class_names=names.txt --to=coco_json \
        --output=OUT

Formats (`--from` / `--to`): `annotations` (the reference's `path x1,y1,x2,y2,cls` text, annotations.py),
`coco_json` (coco_json.py), `yolo_txt` (yolo_txt.py). Input is validated by the format's reader. Output is a new
folder holding the images (hard links where possible, else copies) and the annotations:

    annotations: OUT/images/..., OUT/annotations.txt (paths relative to it), OUT/classes.txt
    coco_json:   OUT/images/..., OUT/annotations.json (file_name relative to OUT/images)
    yolo_txt:    OUT/images/..., OUT/labels/<stem>.txt, OUT/classes.txt

Boxes: COCO and YOLO keep sub-pixel corners (YOLO with 8 decimals); the reference format holds integers (rounded).
Crowd / difficult boxes become `iscrowd: 1` in COCO JSON; the other two formats cannot mark them, so they are left
out (with a warning giving the count).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from absl import flags, logging

from yolo_jax.data import annotations as annotations_lib
from yolo_jax.data import coco_json, yolo_txt
from yolo_jax.errors import FlagError, OutputExistsError

FORMATS = ('annotations', 'coco_json', 'yolo_txt')


def read(fmt: str, input_path: str, *, images: str = '', class_names: str = '') -> tuple[list, tuple[str, ...]]:
    """(records, class names) of a data set in format `fmt` (see the module docstring for the arguments)."""
    if fmt == 'coco_json':
        return coco_json.read_coco_json(input_path, images or None)
    if fmt not in FORMATS:
        raise ValueError(f'unknown format {fmt!r}; expected one of {FORMATS}')
    if not class_names:
        raise FlagError(f'--class_names: reading {fmt} needs a class-names file')
    names = annotations_lib.read_class_names(class_names)
    if fmt == 'annotations':
        return annotations_lib.read_annotations(input_path, names, keep_empty=True), names
    return yolo_txt.read_yolo_txt(input_path, names), names


def _image_names(records: Sequence[annotations_lib.AnnotationRecord]) -> list[str]:
    """File names under OUT/images: the original names, prefixed with the index where two would collide."""
    names = [Path(r.path).name for r in records]
    if len(set(names)) == len(names):
        return names
    return [f'{i:06d}_{n}' for i, n in enumerate(names)]


def _link_or_copy(src: str, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write(
    fmt: str,
    records: Sequence[annotations_lib.AnnotationRecord],
    class_names: Sequence[str],
    output: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """Writes records in format `fmt` into a new folder `output` (atomically: built beside it, then renamed).

    Returns the annotation file (annotations.txt / annotations.json) or, for yolo_txt, the images folder (what
    config.data.*_annotations / *_images then point at).
    """
    if fmt not in FORMATS:
        raise ValueError(f'unknown format {fmt!r}; expected one of {FORMATS}')
    output = Path(output)
    if output.exists() and not overwrite:
        raise OutputExistsError(f'--output={output} exists; pass --overwrite to replace it')
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{output.name}.', suffix='.tmp', dir=output.parent))
    try:
        names = _image_names(records)
        (tmp / 'images').mkdir()
        for r, name in zip(records, names, strict=True):
            _link_or_copy(r.path, tmp / 'images' / name)
        dropped = 0
        if fmt == 'coco_json':
            data = coco_json.to_coco_dict(records, class_names, names)
            (tmp / 'annotations.json').write_text(json.dumps(data) + '\n', encoding='utf-8')
            result = 'annotations.json'
        else:
            (tmp / 'classes.txt').write_text(''.join(n + '\n' for n in class_names), encoding='utf-8')
            lines = []
            if fmt == 'yolo_txt':
                (tmp / 'labels').mkdir()
            for r, name in zip(records, names, strict=True):
                keep = ~r.difficult_flags()
                dropped += int((~keep).sum())
                if fmt == 'annotations':
                    lines.append(annotations_lib.format_line(f'images/{name}', r.boxes[keep], r.classes[keep]))
                else:
                    text = yolo_txt.format_label(r.boxes[keep], r.classes[keep], r.width, r.height)
                    (tmp / 'labels' / Path(name).with_suffix('.txt')).write_text(text, encoding='utf-8')
            if fmt == 'annotations':
                (tmp / 'annotations.txt').write_text(''.join(ln + '\n' for ln in lines), encoding='utf-8')
            result = 'annotations.txt' if fmt == 'annotations' else 'images'
        if dropped:
            logging.warning('%s cannot mark crowd/difficult boxes: %d such boxes left out', fmt, dropped)
        if output.exists():
            shutil.rmtree(output)
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logging.info('Wrote %d images as %s to %s', len(records), fmt, output)
    return output / result


def convert(
    src: str, dst: str, input_path: str, output: str, *, images: str = '', class_names: str = '',
    overwrite: bool = False,
) -> Path:
    """read(src, ...) then write(dst, ...); returns what `write` returns."""
    records, names = read(src, input_path, images=images, class_names=class_names)
    return write(dst, records, names, output, overwrite=overwrite)


def dataset_flags(fmt: str, output: str | Path, split: str = 'train') -> list[str]:
    """The `--config.data.*` flags that read a folder `write(fmt, ..., output)` made as the `split` split."""
    out = Path(output)
    flags_ = [f'--config.data.dataset={fmt}']
    if fmt == 'annotations':
        flags_ += [f'--config.data.{split}_annotations={out / "annotations.txt"}']
    elif fmt == 'coco_json':
        flags_ += [f'--config.data.{split}_annotations={out / "annotations.json"}']
    flags_ += [f'--config.data.{split}_images={out / "images"}'] if fmt != 'annotations' else []
    flags_ += [f'--config.data.class_names={out / "classes.txt"}'] if fmt != 'coco_json' else []
    return flags_


def _define_flags() -> None:
    """convert's own flags (cli.run adds --verbose; there is no config)."""
    flags.DEFINE_enum('from', None, list(FORMATS), 'Input format.')
    flags.DEFINE_enum('to', None, list(FORMATS), 'Output format.')
    flags.DEFINE_string('input', None, 'annotations / coco_json: the annotation file; yolo_txt: the image folder or '
                        'list file.')
    flags.DEFINE_string('images', '', 'coco_json input: the image folder (default: the JSON file\'s folder).')
    flags.DEFINE_string('class_names', '', 'annotations / yolo_txt input: the class-names file.')
    flags.DEFINE_string('output', None, 'Folder to create.')
    flags.DEFINE_bool('overwrite', False, 'Replace an existing output folder.')
    flags.mark_flags_as_required(['from', 'to', 'input', 'output'])


def main() -> None:
    """`python -m yolo_jax.data.convert --from=... --input=... --to=... --output=...` (cli.run)."""
    f = flags.FLAGS
    path = convert(f['from'].value, f.to, f.input, f.output, images=f.images, class_names=f.class_names,
                   overwrite=f.overwrite)
    print(f'wrote {path}; as a training split: {" ".join(dataset_flags(f.to, f.output))}')


if __name__ == '__main__':
    from yolo_jax import cli

    cli.run(main, _define_flags, config=False)
