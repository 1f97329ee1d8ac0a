"""A user's own labelled photos: one folder (or data.yaml / COCO .json file) in config.data.root, no converter.

config.data.dataset:
    'auto'       detect the layout of config.data.root (below) and read it;
    'voc_xml'    the same, but config.data.root must be a Pascal VOC XML layout;
    'yolo_yaml'  the same, but config.data.root must be an Ultralytics data.yaml (or a folder holding one).

Layouts, tried in this order on the folder (`detect_layout`):
    Ultralytics yaml   ROOT is a .yaml/.yml file, or ROOT/data.yaml (yolo_yaml.py); splits train / test (else val).
    COCO JSON          ROOT is a .json file, or ROOT holds exactly one .json file; images beside it, in
                       images/ or in a folder named as the JSON (or config.data.image_dir).
    VOC devkit         ROOT/Annotations, ROOT/JPEGImages, ImageSets/Main/<split>.txt (voc_xml.py): train =
                       `trainval` if listed, else `train`; test = `test`, else `val`.
    VOC flat           ROOT/annotations/*.xml + ROOT/images/, or ROOT/*.xml beside the images (or with their
                       folder in config.data.image_dir).
    YOLO txt folder    a names file (config.data.class_names, else ROOT/classes.txt, obj.names, names.txt or
                       classes.names) and ROOT/images/ (+ labels/), with images/train + images/val (or test)
                       as the splits when present, else the images of ROOT/images or ROOT.
A ROOT that is none of these but holds a `train/` folder that is one (Roboflow's VOC and COCO exports) uses
`train/` and `test/` (else `valid/`, `val/`); a ROOT with a single sub-folder is looked into once.

A set without a test split is split here: an image is a test image when the hash of its path relative to ROOT
falls below config.data.test_fraction (at least one image each way). The split is written once, atomically, to
config.data.split_file (main.py: WORKDIR/split.json) and read back on every later run, so it never changes
(images added later are placed by the same hash, with a warning). The layout is logged in one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import ml_collections
from absl import logging

from yolo_jax.data import annotations as annotations_lib
from yolo_jax.data import coco_json, voc_xml, yolo_txt, yolo_yaml
from yolo_jax.data.source_base import FileSource
from yolo_jax.errors import ConfigError, DataError, MissingFileError

DATASETS = ('auto', 'voc_xml', 'yolo_yaml')
LAYOUTS = ('VOC devkit', 'VOC flat XML', 'Ultralytics data.yaml', 'YOLO txt folder with a names file',
           'COCO JSON file')
NAMES_FILES = ('classes.txt', 'obj.names', 'names.txt', 'classes.names')
TEST_FOLDERS = ('test', 'valid', 'val', 'validation')


@dataclasses.dataclass(frozen=True)
class Source:
    """Annotated images in one format: fmt 'voc' (paths: XML files), 'yolo' (paths: image folders / list files)
    or 'coco' (paths: the JSON file); image_dirs: where VOC / COCO look for the images."""

    fmt: str
    paths: tuple[Path, ...]
    image_dirs: tuple[Path, ...] = ()


@dataclasses.dataclass(frozen=True)
class Layout:
    """A detected data set: kind (one of LAYOUTS), root, its train source, its test source (None: split here),
    class names when the layout states them (yaml names, a names file; None: from the annotations), a
    one-line description."""

    kind: str
    root: Path
    train: Source
    test: Source | None
    names: tuple[str, ...] | None
    description: str


def _images_in(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in yolo_txt.IMAGE_EXTENSIONS for p in folder.iterdir())


def _voc(folder: Path, image_dir: str) -> Layout | None:
    layout = voc_xml.find_layout(folder, image_dir)
    if layout is None:
        return None
    everything = Source('voc', tuple(voc_xml.xml_files(layout.annotations)), layout.image_dirs)
    if layout.kind == 'devkit':
        listed = layout.split_names()
        train_name = next((n for n in ('trainval', 'train') if n in listed), None)
        test_name = next((n for n in ('test', 'val') if n in listed), None)
        if train_name is None:  # e.g. CVAT's ImageSets/Main/default.txt: no split of its own
            return Layout('VOC devkit', folder, everything, None, None,
                          f'VOC devkit {folder} (Annotations/, JPEGImages/, no train split listed)')
        train = Source('voc', tuple(voc_xml.split_files(layout, train_name)), layout.image_dirs)
        test = Source('voc', tuple(voc_xml.split_files(layout, test_name)), layout.image_dirs) if test_name else None
        return Layout('VOC devkit', folder, train, test, None,
                      f'VOC devkit {folder} (Annotations/, JPEGImages/, ImageSets/Main/{train_name}.txt'
                      + (f' and {test_name}.txt)' if test_name else ')'))
    where = layout.annotations.name + '/ and ' + ', '.join(d.name + '/' for d in layout.image_dirs)
    return Layout('VOC flat XML', folder, everything, None, None, f'VOC XML files {folder} ({where})')


def _yaml(path: Path) -> Layout:
    data = yolo_yaml.read_data_yaml(path)
    test_key = next((k for k in ('test', 'val') if k in data.splits), None)
    train = Source('yolo', data.splits['train'])
    test = Source('yolo', data.splits[test_key]) if test_key else None
    return Layout('Ultralytics data.yaml', path.parent, train, test, data.names,
                  f'Ultralytics data.yaml {path} (train' + (f', {test_key})' if test_key else ')'))


def _coco_images(path: Path) -> Path:
    """The image folder of a COCO JSON: the first of its own folder, images/ and <json stem>/ beside it that holds
    its first image (default: its own folder, whose errors then name the missing files)."""
    try:
        first = json.loads(path.read_text(encoding='utf-8'))['images'][0]['file_name']
    except (ValueError, KeyError, IndexError, TypeError, OSError):
        return path.parent  # read_coco_json reports what is wrong with the file
    candidates = (path.parent, path.parent / 'images', path.parent / path.stem)
    return next((d for d in candidates if (d / str(first)).is_file()), path.parent)


def _coco(path: Path, image_dir: str) -> Layout:
    dirs = (Path(image_dir).expanduser() if image_dir else _coco_images(path),)
    return Layout('COCO JSON file', path.parent, Source('coco', (path,), dirs), None, None, f'COCO JSON {path}')


def _names_file(folder: Path, class_names: str) -> Path | None:
    if class_names:
        return Path(class_names).expanduser()
    return next((folder / n for n in NAMES_FILES if (folder / n).is_file()), None)


def _yolo_folder(folder: Path, class_names: str) -> Layout | None:
    names_file = _names_file(folder, class_names)
    if names_file is None:
        return None
    images = voc_xml._child(folder, 'images')  # noqa: SLF001 - the same case-insensitive folder lookup
    if images is None and not (_images_in(folder) and any(p.suffix == '.txt' and p != names_file
                                                          for p in folder.iterdir())):
        return None
    names = annotations_lib.read_class_names(names_file)
    base = images or folder
    train_dir = voc_xml._child(base, 'train')  # noqa: SLF001
    test_dir = voc_xml._child(base, *TEST_FOLDERS)  # noqa: SLF001
    if train_dir is not None and test_dir is not None:
        return Layout('YOLO txt folder with a names file', folder, Source('yolo', (train_dir,)),
                      Source('yolo', (test_dir,)), names,
                      f'YOLO txt folder {folder} ({base.name}/{train_dir.name}, {base.name}/{test_dir.name}, '
                      f'{names_file.name})')
    return Layout('YOLO txt folder with a names file', folder, Source('yolo', (base,)), None, names,
                  f'YOLO txt folder {folder} ({base.name}/, {names_file.name})')


def _detect_folder(folder: Path, image_dir: str, class_names: str) -> Layout | None:
    """The layout of one folder, or None."""
    for name in ('data.yaml', 'data.yml', 'dataset.yaml'):
        if (folder / name).is_file():
            return _yaml(folder / name)
    found = _voc(folder, image_dir)
    if found is not None:
        return found
    found = _yolo_folder(folder, class_names)
    if found is not None:
        return found
    jsons = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == '.json'
                   and p.name != 'split.json')
    if len(jsons) == 1:
        return _coco(jsons[0], image_dir)
    return None


def detect_layout(root: str | os.PathLike, image_dir: str = '', class_names: str = '') -> Layout:
    """The layout of `root` (see the module docstring).

    Raises:
        MissingFileError: `root` does not exist.
        DataError: no supported layout, naming the ones tried.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise MissingFileError(f'config.data.root: {root} does not exist')
    if root.is_file():
        if root.suffix.lower() in ('.yaml', '.yml'):
            return _yaml(root)
        if root.suffix.lower() == '.json':
            return _coco(root, image_dir)
        raise DataError(f'config.data.root: {root} is a file but not a data.yaml or a COCO .json')
    found = _detect_folder(root, image_dir, class_names)
    if found is not None:
        return found
    train_dir = voc_xml._child(root, 'train')  # noqa: SLF001
    train = _detect_folder(train_dir, image_dir, class_names) if train_dir else None
    if train is not None:
        test_dir = voc_xml._child(root, *TEST_FOLDERS)  # noqa: SLF001
        test = _detect_folder(test_dir, image_dir, class_names) if test_dir else None
        if test is not None and test.kind != train.kind:
            raise DataError(f'config.data.root: {train_dir} is a {train.kind} but {test_dir} a {test.kind}')
        return dataclasses.replace(
            train, root=root, test=test.train if test else train.test,
            description=f'{train.description}' + (f' with the test split {test_dir}' if test else ''))
    subfolders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith('.')]
    if len(subfolders) == 1:
        found = _detect_folder(subfolders[0], image_dir, class_names)
        if found is not None:
            return found
    raise DataError(f'config.data.root: {root} is none of the supported layouts: {", ".join(LAYOUTS)} '
                    '(README: "Train on your own photos")')


def layout_of(config: ml_collections.ConfigDict) -> Layout:
    """detect_layout of config.data.root, checked against config.data.dataset."""
    dataset = str(config.data.dataset)
    if not config.data.root:
        raise ConfigError(f"config.data.root: dataset={dataset!r} needs the data set's folder (or data.yaml / "
                          'COCO .json file)')
    layout = detect_layout(config.data.root, str(config.data.image_dir), str(config.data.class_names))
    wanted = {'voc_xml': ('VOC devkit', 'VOC flat XML'), 'yolo_yaml': ('Ultralytics data.yaml',)}.get(dataset)
    if wanted is not None and layout.kind not in wanted:
        raise ConfigError(f'config.data.dataset={dataset!r} but config.data.root {config.data.root} is a '
                          f"{layout.kind} (use dataset='auto')")
    return layout


# ----------------------------------------------------------------------------------------------------------------
# Classes and records.


def class_names(layout: Layout, names_file: str = '') -> tuple[str, ...]:
    """The set's classes: the layout's own (yaml names, names file), config.data.class_names' for VOC, the COCO
    categories, else the sorted object names of every VOC XML file of the set."""
    if layout.names is not None:
        return layout.names
    if names_file:
        return annotations_lib.read_class_names(names_file)
    if layout.train.fmt == 'coco':
        return coco_json.read_categories(layout.train.paths[0])
    sources = [layout.train] + ([layout.test] if layout.test else [])
    files, _ = voc_xml.parse_files([p for s in sources for p in s.paths])  # errors: reported when read
    names = voc_xml.class_names_of(files)
    if not names:
        raise DataError(f'{layout.root}: no objects in any VOC XML file, so no classes')
    return names


def read_source(source: Source, names: Sequence[str]) -> list[annotations_lib.AnnotationRecord]:
    """Records of `source` with class ids in `names`."""
    if source.fmt == 'voc':
        return voc_xml.read_voc_xml(source.paths, source.image_dirs, names)[0]
    if source.fmt == 'coco':
        records, got = coco_json.read_coco_json(source.paths[0], source.image_dirs[0] if source.image_dirs else None)
        if tuple(got) != tuple(names):
            raise DataError(f'{source.paths[0]}: categories {list(got)} differ from the set\'s {list(names)}')
        return records
    records: list[annotations_lib.AnnotationRecord] = []
    for images in source.paths:
        for r in yolo_txt.read_yolo_txt(images, names):
            records.append(dataclasses.replace(r, line=len(records)))
    return records


def describe(config: ml_collections.ConfigDict) -> tuple[tuple[str, ...], str]:
    """(class names, where they come from) of config.data.root; logs the detected layout in one line."""
    layout = layout_of(config)
    split = 'its own test split' if layout.test else (
        f'test split: {config.data.test_fraction:g} of the images by file-name hash'
        + (f', kept in {config.data.split_file}' if config.data.split_file else ''))
    names = class_names(layout, str(config.data.class_names))
    logging.info('Data: %s; %d classes %s; %s', layout.description, len(names), list(names)[:10], split)
    return names, f'the data set {config.data.root} ({layout.kind})'


def read_split(config: ml_collections.ConfigDict, split: str) -> tuple[list[annotations_lib.AnnotationRecord],
                                                                      tuple[str, ...]]:
    """(records of `split` ('train' or 'test'), class names) of config.data.root."""
    layout = layout_of(config)
    names = class_names(layout, str(config.data.class_names))
    if layout.test is not None:
        return read_source(layout.train if split == 'train' else layout.test, names), names
    records = read_source(layout.train, names)
    keys = [split_key(r.path, layout.root) for r in records]
    test = test_keys(keys, float(config.data.test_fraction), str(config.data.split_file), layout.root)
    chosen = [r for r, k in zip(records, keys, strict=True) if (k in test) == (split == 'test')]
    return [dataclasses.replace(r, line=i) for i, r in enumerate(chosen)], names


# ----------------------------------------------------------------------------------------------------------------
# The split of a set without one.


def split_key(path: str, root: Path) -> str:
    """An image's name in the split: its path relative to `root` ('/'-separated), else the absolute path."""
    p = Path(path).resolve()
    try:
        return p.relative_to(root.resolve()).as_posix()
    except ValueError:
        return p.as_posix()


def hash_fraction(key: str) -> float:
    """A number in [0, 1) from the SHA-1 of `key`: the same on every machine and run."""
    return int(hashlib.sha1(key.encode('utf-8')).hexdigest()[:15], 16) / 16**15


def hash_split(keys: Sequence[str], fraction: float) -> set[str]:
    """The test keys: hash_fraction(key) < fraction, at least one and at most len(keys) - 1 (2+ keys)."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f'config.data.test_fraction={fraction} must lie in (0, 1)')
    ordered = sorted(set(keys), key=lambda k: (hash_fraction(k), k))
    test = {k for k in ordered if hash_fraction(k) < fraction}
    if len(ordered) >= 2 and not test:
        test = {ordered[0]}
    if len(ordered) >= 2 and len(test) == len(ordered):
        test.discard(ordered[-1])
    return test


def test_keys(keys: Sequence[str], fraction: float, split_file: str, root: Path) -> set[str]:
    """The test keys among `keys`: from `split_file` when it exists (keys it does not list: by hash, warned),
    else hash_split, written to `split_file` ('' = not written) atomically."""
    if split_file and Path(split_file).is_file():
        try:
            saved = json.loads(Path(split_file).read_text(encoding='utf-8'))
            known_test, known_train = set(saved['test']), set(saved['train'])
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f'{split_file}: not a split file this project wrote ({e}); delete it to split '
                            'again') from None
        new = [k for k in keys if k not in known_test and k not in known_train]
        if new:
            logging.warning('%d image(s) are not in %s (added since the split was made?): placed by file-name '
                            'hash, e.g. %s', len(new), split_file, new[0])
        return known_test | {k for k in new if hash_fraction(k) < fraction}
    test = hash_split(keys, fraction)
    if split_file:
        text = json.dumps({'root': str(root), 'test_fraction': fraction,
                           'test': sorted(test), 'train': sorted(set(keys) - test)}, indent=1)
        annotations_lib.write_text_atomic(split_file, text + '\n')
        logging.info('Split %d images into %d train / %d test; written to %s', len(set(keys)),
                     len(set(keys)) - len(test), len(test), split_file)
    return test


# ----------------------------------------------------------------------------------------------------------------
# The registered sources (sources.REGISTRY): one per config.data.dataset name, all reading config.data.root.


class _FolderSource(FileSource):
    """A user's folder (or data.yaml / COCO .json) in config.data.root, both splits from it."""

    field, field_help = 'root', "the data set's folder (or data.yaml / COCO .json file)"

    def split_field(self, split: str) -> str:
        del split
        return 'root'

    def class_names(self, config: ml_collections.ConfigDict) -> tuple[tuple[str, ...], str]:
        return describe(config)

    def records(self, config: ml_collections.ConfigDict, split: str) -> tuple[list[annotations_lib.AnnotationRecord],
                                                                               tuple[str, ...]]:
        return read_split(config, split)


class AutoSource(_FolderSource):
    name = 'auto'


class VocXmlSource(_FolderSource):
    name = 'voc_xml'


class YoloYamlSource(_FolderSource):
    name = 'yolo_yaml'


SOURCES = (AutoSource(), VocXmlSource(), YoloYamlSource())
