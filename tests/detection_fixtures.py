"""Small generated detection data sets for the format tests: images with solid coloured boxes, written as
COCO-format JSON + image folder and as YOLO-format labels. Boxes are x1, y1, x2, y2 in pixels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

CLASS_NAMES = ('red', 'green', 'blue')
CATEGORY_IDS = (3, 7, 11)  # non-contiguous COCO category ids: class k is CATEGORY_IDS[k]
COLOURS = ((220, 40, 40), (40, 200, 40), (40, 40, 220))


class Spec(NamedTuple):
    name: str
    height: int
    width: int
    boxes: tuple  # ((x1, y1, x2, y2), ...) pixels
    classes: tuple
    crowd: tuple = ()  # per box, default all False

    def crowd_flags(self) -> np.ndarray:
        return np.asarray(self.crowd or (False,) * len(self.classes), bool)


TRAIN = (
    Spec('t0.png', 96, 128, ((10, 12, 50, 60), (70.5, 20.25, 120, 80)), (0, 1)),
    Spec('t1.png', 80, 80, ((5, 5, 40, 40),), (2,)),
    Spec('t2.png', 120, 90, ((0, 0, 45, 60), (45, 60, 90, 120)), (1, 2)),
    Spec('t3.png', 64, 64, ((16, 16, 48, 48),), (0,)),
    Spec('t4.png', 100, 70, ((10, 10, 60, 50), (20, 55, 65, 95)), (2, 0)),
    Spec('t5.png', 72, 96, ((30, 10, 90, 70),), (1,)),
    Spec('t6.png', 90, 90, ((5, 40, 85, 85), (10, 5, 30, 30)), (0, 2), (True, False)),
    Spec('t7.png', 64, 100, ((50, 8, 95, 60),), (2,)),
)
TEST = (
    Spec('v0.png', 96, 128, ((12, 10, 60, 70.5), (80, 30, 125, 90)), (0, 2)),
    Spec('v1.png', 80, 64, ((4, 6, 60, 50), (0, 52, 30, 80)), (1, 1), (False, True)),
    Spec('v2.png', 64, 64, (), ()),
    Spec('v3.png', 100, 80, ((20, 20, 70, 90),), (2,)),
)


def draw(spec: Spec, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8: grey noise with each box filled in its class colour."""
    rng = np.random.default_rng(seed)
    image = rng.integers(100, 140, (spec.height, spec.width, 3)).astype(np.uint8)
    for (x1, y1, x2, y2), c in zip(spec.boxes, spec.classes):
        image[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))] = COLOURS[c]
    return image


def write_images(folder: Path, specs) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, spec in enumerate(specs):
        Image.fromarray(draw(spec, i)).save(folder / spec.name)
    return folder


def coco_dict(specs, first_id: int = 10) -> dict:
    """COCO-format dict: image ids first_id, first_id + 2, ... (not positions), annotation ids from 100."""
    data = {'images': [], 'annotations': [],
            'categories': [{'id': cid, 'name': n, 'supercategory': 'colour'}
                           for cid, n in sorted(zip(CATEGORY_IDS, CLASS_NAMES))]}
    for i, spec in enumerate(specs):
        image_id = first_id + 2 * i
        data['images'].append({'id': image_id, 'file_name': spec.name, 'width': spec.width, 'height': spec.height})
        for (x1, y1, x2, y2), c, crowd in zip(spec.boxes, spec.classes, spec.crowd_flags()):
            data['annotations'].append({
                'id': 100 + len(data['annotations']), 'image_id': image_id, 'category_id': CATEGORY_IDS[c],
                'bbox': [x1, y1, x2 - x1, y2 - y1], 'area': (x2 - x1) * (y2 - y1), 'iscrowd': int(crowd),
            })
    return data


def write_coco(root: Path, specs, name: str) -> tuple[Path, Path]:
    """root/<name>/ images and root/<name>.json; returns (json, image folder)."""
    images = write_images(root / name, specs)
    path = root / f'{name}.json'
    path.write_text(json.dumps(coco_dict(specs)))
    return path, images


def write_yolo(root: Path, specs, name: str) -> Path:
    """root/<name>/images/*.png and root/<name>/labels/*.txt (crowd boxes left out), root/classes.txt; returns the
    images folder."""
    images = write_images(root / name / 'images', specs)
    labels = root / name / 'labels'
    labels.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        lines = []
        for (x1, y1, x2, y2), c, crowd in zip(spec.boxes, spec.classes, spec.crowd_flags()):
            if crowd:
                continue
            w, h = spec.width, spec.height
            lines.append(f'{c} {(x1 + x2) / 2 / w:.8f} {(y1 + y2) / 2 / h:.8f} {(x2 - x1) / w:.8f} {(y2 - y1) / h:.8f}')
        if lines:  # images without boxes get no label file (the YOLO convention for background images)
            (labels / Path(spec.name).with_suffix('.txt')).write_text('\n'.join(lines) + '\n')
    (root / 'classes.txt').write_text('\n'.join(CLASS_NAMES) + '\n')
    return images
