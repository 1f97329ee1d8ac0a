"""The Ultralytics data set layout: a `data.yaml` naming the image folders of each split and the classes.

    path: ../datasets/pets     # optional: the root that train/val/test are relative to (relative: to the yaml)
    train: images/train        # a folder, a list file (.txt of image paths), or a list of either
    val: images/val
    test: images/test          # optional
    names: [cat, dog]          # or {0: cat, 1: dog}; `nc`, if given, must equal the number of names

Labels are YOLO txt files (`cls cx cy w h` normalised), `images/` -> `labels/` (yolo_txt.py reads them). Roboflow
writes `train: ../train/images` relative to the yaml's own folder while its folders sit beside the yaml: a path
that does not exist is also tried without its leading `../`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from yolo_jax.data.annotations import AnnotationError, AnnotationRecord
from yolo_jax.data.yolo_txt import read_yolo_txt

SPLIT_KEYS = ('train', 'val', 'test')


class YoloYamlError(AnnotationError):
    """A data.yaml that cannot be used; the message names the file and the key."""


@dataclasses.dataclass(frozen=True)
class YoloYaml:
    """A parsed data.yaml: per split key present, its image folders / list files; the class names."""

    path: Path
    splits: dict[str, tuple[Path, ...]]
    names: tuple[str, ...]


def _names(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, dict):
        keys = sorted(value) if all(isinstance(k, int) for k in value) else None
        if keys != list(range(len(value))):
            raise YoloYamlError(f'{where}: names as a mapping needs the keys 0..{len(value) - 1}, got {list(value)}')
        value = [value[k] for k in keys]
    if not isinstance(value, list) or not value or not all(isinstance(n, (str, int)) for n in value):
        raise YoloYamlError(f'{where}: names must be a non-empty list of class names or a {{0: name, ...}} mapping')
    names = tuple(str(n).strip() for n in value)
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated or not all(names):
        raise YoloYamlError(f'{where}: blank or duplicated class names {duplicated}')
    return names


def _resolve(entry: str, base: Path, yaml_dir: Path) -> Path:
    p = Path(entry).expanduser()
    if p.is_absolute():
        return p
    candidate = base / p
    if not candidate.exists() and entry.startswith('../'):
        beside = yaml_dir / entry[3:]  # Roboflow's `../train/images` next to the yaml
        if beside.exists():
            return beside
    return candidate


def read_data_yaml(path: str | os.PathLike) -> YoloYaml:
    """Parses and checks a data.yaml (see the module docstring); raises YoloYamlError naming the file and key."""
    import yaml  # noqa: PLC0415  (only for this format)

    path = Path(path).expanduser()
    if not path.is_file():
        raise YoloYamlError(f'{path}: data yaml not found')
    try:
        data = yaml.safe_load(path.read_text(encoding='utf-8'))
    except yaml.YAMLError as e:
        raise YoloYamlError(f'{path}: not valid YAML ({e})'.replace('\n', ' ')) from None
    if not isinstance(data, dict):
        raise YoloYamlError(f'{path}: expected a mapping with train, val and names')
    if 'names' not in data:
        raise YoloYamlError(f'{path}: no `names` (the class names)')
    names = _names(data['names'], f'{path}: names')
    if 'nc' in data and data['nc'] != len(names):
        raise YoloYamlError(f'{path}: nc={data["nc"]} but names lists {len(names)} classes')
    yaml_dir = path.resolve().parent
    base = yaml_dir
    if data.get('path'):
        base = Path(str(data['path'])).expanduser()
        base = base if base.is_absolute() else yaml_dir / base
    splits = {}
    for key in SPLIT_KEYS:
        value = data.get(key)
        if value in (None, '', []):
            continue
        entries = value if isinstance(value, list) else [value]
        if not all(isinstance(e, str) for e in entries):
            raise YoloYamlError(f'{path}: {key} must be a path or a list of paths, got {value!r}')
        resolved = tuple(_resolve(e, base, yaml_dir) for e in entries)
        missing = [str(p) for p in resolved if not p.exists()]
        if missing:
            raise YoloYamlError(f'{path}: {key}: no such image folder or list file: {", ".join(missing)}')
        splits[key] = resolved
    if 'train' not in splits:
        raise YoloYamlError(f'{path}: no `train` split')
    return YoloYaml(path, splits, names)


def read_split(data: YoloYaml, key: str) -> list[AnnotationRecord]:
    """The records of split `key` ('train', 'val' or 'test'): every folder / list file's images in order, `line`
    renumbered over them."""
    records: list[AnnotationRecord] = []
    for images in data.splits[key]:
        for r in read_yolo_txt(images, data.names):
            records.append(dataclasses.replace(r, line=len(records)))
    return records
