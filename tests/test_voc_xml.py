"""Pascal VOC XML folders as labelling tools write them: every layout (devkit, XML beside the images,
annotations/ + images/, an XML folder with the image folder in config.data.image_dir), read against the boxes the
generated images were drawn with; every bad-annotation case reported in one error naming each file and reason;
BCCD (real LabelImg-style data with two broken boxes) when ../shared/data is present."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from detection_fixtures import CLASS_NAMES, TEST, TRAIN, Spec, write_images

from configs.photos import get_config
from yolo_jax.data import own_data, voc_xml
from yolo_jax.data.annotations import AnnotationWarning, read_class_names

REPO = Path(__file__).resolve().parents[1]
SORTED = tuple(sorted(CLASS_NAMES))  # without a names file the classes are the sorted names found


def voc_text(spec: Spec, filename: str | None = None, *, truncated=(), size=None, extra_object: str = '') -> str:
    """A LabelImg-style XML for `spec` (crowd boxes written as difficult)."""
    width, height = size or (spec.width, spec.height)
    objects = []
    for k, ((x1, y1, x2, y2), c, hard) in enumerate(zip(spec.boxes, spec.classes, spec.crowd_flags())):
        objects.append(
            f'<object><name>{CLASS_NAMES[c]}</name><pose>Unspecified</pose>'
            f'<truncated>{int(k in truncated)}</truncated><difficult>{int(hard)}</difficult>'
            f'<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>')
    name = spec.name if filename is None else filename
    return (f'<annotation><folder>images</folder><filename>{name}</filename><path>/home/someone/{name}</path>'
            f'<size><width>{width}</width><height>{height}</height><depth>3</depth></size><segmented>0</segmented>'
            + ''.join(objects) + extra_object + '</annotation>\n')


def write_xml(folder: Path, specs, **kwargs) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in specs:
        path = folder / (Path(spec.name).stem + '.xml')
        path.write_text(voc_text(spec, **kwargs))
        paths.append(path)
    return paths


def write_devkit(root: Path, train=TRAIN, test=TEST, sets=('trainval', 'test')) -> Path:
    write_images(root / 'JPEGImages', train + test)
    write_xml(root / 'Annotations', train + test)
    main = root / 'ImageSets' / 'Main'
    main.mkdir(parents=True)
    lists = {'trainval': train, 'train': train, 'test': test, 'val': test}
    for name in sets:
        (main / f'{name}.txt').write_text(''.join(Path(s.name).stem + '\n' for s in lists[name]))
    return root


def check(records, specs, names=SORTED):
    """Records equal the specs' boxes (float pixels), classes (as ids into `names`) and difficult flags."""
    assert [Path(r.path).name for r in records] == [s.name for s in specs]
    for r, s in zip(records, specs, strict=True):
        assert (r.width, r.height) == (s.width, s.height) and r.boxes.dtype == np.float32
        np.testing.assert_array_equal(r.boxes, np.asarray(s.boxes, np.float32).reshape(-1, 4))
        np.testing.assert_array_equal(r.classes, [names.index(CLASS_NAMES[c]) for c in s.classes])
        np.testing.assert_array_equal(r.difficult_flags(), s.crowd_flags())


def config_for(root, **data):
    config = get_config('smoke')
    config.data.root = str(root)
    for k, v in data.items():
        config.data[k] = v
    return config


def test_devkit_layout_and_split_files(tmp_path):
    root = write_devkit(tmp_path / 'VOC')
    config = config_for(root)
    layout = own_data.layout_of(config)
    assert layout.kind == 'VOC devkit' and 'trainval.txt' in layout.description
    train, names = own_data.read_split(config, 'train')
    test, _ = own_data.read_split(config, 'test')
    assert names == SORTED
    check(train, TRAIN)
    check(test, TEST)
    assert test[2].boxes.shape == (0, 4)  # an image without objects is kept (it can hold false positives)
    # Without trainval the devkit's train is the train split, val the test split.
    root2 = write_devkit(tmp_path / 'VOC2', sets=('train', 'val'))
    check(own_data.read_split(config_for(root2), 'train')[0], TRAIN)
    check(own_data.read_split(config_for(root2), 'test')[0], TEST)


def test_flat_layouts_find_the_images(tmp_path):
    specs = TRAIN + TEST
    # 1. XML beside each image.
    beside = tmp_path / 'beside'
    write_images(beside, specs)
    write_xml(beside, specs)
    # 2. annotations/ + images/ (CVAT, Roboflow).
    sibling = tmp_path / 'sibling'
    write_images(sibling / 'images', specs)
    write_xml(sibling / 'annotations', specs)
    # 3. A folder of XML files, the images elsewhere (config.data.image_dir); filename written as a path of the
    # labelling machine, and one XML whose filename is stale: found by the XML's stem.
    xml_only = tmp_path / 'xml'
    write_xml(xml_only, specs[1:], filename='C:\\labels\\' + 'x.png')
    write_xml(xml_only, specs[:1], filename='renamed_since.png')
    elsewhere = write_images(tmp_path / 'pictures', specs)
    for root, kind, extra in ((beside, 'VOC flat XML', {}), (sibling, 'VOC flat XML', {}),
                              (xml_only, 'VOC flat XML', {'image_dir': str(elsewhere)})):
        config = config_for(root, **extra)
        layout = own_data.layout_of(config)
        assert layout.kind == kind and layout.test is None, root
        records, names = voc_xml.read_voc_xml(layout.train.paths, layout.train.image_dirs)
        order = sorted(specs, key=lambda s: Path(s.name).stem)  # XML files in name order
        if root is xml_only:  # 'x.png' in the filename does not exist: every image comes from the XML's stem
            assert all(Path(r.path).parent == elsewhere for r in records)
        check(records, order)
        assert names == SORTED


def test_names_file_difficult_and_truncated(tmp_path):
    root = tmp_path / 'set'
    write_images(root, TRAIN)
    write_xml(root, TRAIN, truncated=(1,))
    order = ('red', 'green', 'blue')
    (tmp_path / 'names.txt').write_text('\n'.join(order) + '\n')
    records, names = voc_xml.read_voc_xml(voc_xml.xml_files(root), [root], read_class_names(tmp_path / 'names.txt'))
    assert names == order
    check(records, TRAIN, names=order)
    assert [list(r.truncated) for r in records] == [[k == 1 for k in range(len(s.classes))] for s in TRAIN]
    assert records[6].difficult_flags().tolist() == [True, False]  # t6's crowd box, written as difficult
    # Through the config: config.data.class_names gives the order.
    config = config_for(root, class_names=str(tmp_path / 'names.txt'))
    assert own_data.read_split(config, 'train')[1] == order


def test_every_bad_annotation_in_one_error(tmp_path):
    root = tmp_path / 'bad'
    good = TRAIN[:2]
    write_images(root, good + TRAIN[2:4] + TRAIN[5:8])  # no t4.png: t4.xml's image is missing
    write_xml(root, good)
    cases = {
        't2': (voc_text(TRAIN[2]).replace('<xmin>0</xmin>', '<xmin>60</xmin>'), 'xmax < xmin'),  # swapped corners
        't3': (voc_text(Spec('t3.png', 64, 64, ((70, 70, 90, 90),), (0,))), 'lies outside'),
        't4': (voc_text(TRAIN[4], filename='gone.png').replace('t4', 'gone'), 'image not found'),
        't5': (voc_text(TRAIN[5]).replace('<name>green</name>', '<name>purple</name>'), "unknown class 'purple'"),
        't6': (voc_text(TRAIN[6])[:-30], 'malformed XML'),
        't7': (voc_text(TRAIN[7]).replace('<ymin>8</ymin>', '<ymin>eight</ymin>'), 'numeric'),
        't8': (voc_text(TRAIN[0], size=(100, 50)).replace('t0.png', 't8.png'), 'says 100x50'),
        't9': (voc_text(TRAIN[1]).replace('t1.png', 't9.png').replace('<difficult>0', '<difficult>2'), '0 or 1'),
    }
    write_images(root, [TRAIN[0]._replace(name='t8.png'), TRAIN[1]._replace(name='t9.png')])
    for stem, (text, _) in cases.items():
        (root / f'{stem}.xml').write_text(text)
    (root / 'names.txt').write_text('red\ngreen\nblue\n')
    config = config_for(root, class_names=str(root / 'names.txt'))
    with pytest.raises(voc_xml.VocXmlError) as e:
        own_data.read_split(config, 'train')
    message = str(e.value)
    assert message.startswith(f'{len(cases)} bad VOC XML annotation file(s):')
    lines = message.splitlines()[1:]
    assert len(lines) == len(cases)
    for stem, (_, reason) in cases.items():
        [line] = [ln for ln in lines if f'{stem}.xml' in ln]
        assert reason in line, (stem, line)
    # Without a names file 'purple' is a class like the others: that file is fine then.
    with pytest.raises(voc_xml.VocXmlError, match=f'^{len(cases) - 1} bad'):
        own_data.read_split(config_for(root), 'train')


def test_fixable_boxes_are_clipped_or_dropped_with_one_warning(tmp_path):
    root = tmp_path / 'fix'
    spec = Spec('f0.png', 60, 80, ((-3.5, 10, 30, 20), (50, 40, 95, 70), (10, 10, 10, 30), (5, 5, 25, 25)),
                (0, 1, 2, 0))
    write_images(root, [spec])
    write_xml(root, [spec])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        [record], _ = voc_xml.read_voc_xml(voc_xml.xml_files(root), [root])
    [w] = [w for w in caught if issubclass(w.category, AnnotationWarning)]
    text = str(w.message)
    assert text.startswith('3 VOC box(es) fixed:') and text.count('f0.xml') == 3
    assert 'clipped to 0,10,30,20' in text and 'clipped to 50,40,80,60' in text and 'no area; dropped' in text
    np.testing.assert_array_equal(record.boxes, [[0, 10, 30, 20], [50, 40, 80, 60], [5, 5, 25, 25]])
    np.testing.assert_array_equal(record.classes, [SORTED.index(CLASS_NAMES[c]) for c in (0, 1, 0)])


def test_cli_reports_bad_annotations_as_one_error(tmp_path):
    root = tmp_path / 'bad'
    write_images(root, TRAIN[:3])
    write_xml(root, TRAIN[:1])
    (root / 't1.xml').write_text('<annotation><object>')
    (root / 't2.xml').write_text(voc_text(TRAIN[2]).replace('<xmax>45</xmax>', '<xmax>-4</xmax>'))
    proc = subprocess.run([sys.executable, '-m', 'yolo_jax.main', '--config=configs/photos.py:smoke',
                           f'--config.data.root={root}', f'--workdir={tmp_path / "run"}', '--nojemalloc'],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr
    tail = proc.stderr[proc.stderr.index('error: '):].splitlines()
    assert tail[0] == 'error: 2 bad VOC XML annotation file(s):'
    assert 't1.xml: malformed XML' in tail[1] and 't2.xml: object 1' in tail[2] and 'xmax < xmin' in tail[2]
    assert not (tmp_path / 'run' / 'checkpoints').exists()


# ----------------------------------------------------------------------------------------------------------------
# BCCD: the real thing.


def bccd_root(shared_data: Path) -> Path:
    root = shared_data / 'bccd'
    if not (root / 'BCCD' / 'Annotations').is_dir():
        pytest.skip(f'BCCD not found under {root}')
    return root


def test_bccd_reads_364_images_3_classes_and_reports_the_two_broken_boxes(shared_data):
    root = bccd_root(shared_data)
    config = config_for(root)  # the folder above BCCD/: looked into once
    layout = own_data.layout_of(config)
    assert layout.kind == 'VOC devkit' and layout.root == root / 'BCCD'
    assert (len(layout.train.paths), len(layout.test.paths)) == (292, 72)  # trainval / test
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        train, names = own_data.read_split(config, 'train')
        test, _ = own_data.read_split(config, 'test')
    assert names == ('Platelets', 'RBC', 'WBC') and len(train) + len(test) == 364
    assert {Path(r.path).name for r in train}.isdisjoint(Path(r.path).name for r in test)
    fixed = [str(w.message) for w in caught if issubclass(w.category, AnnotationWarning)]
    broken = [ln for msg in fixed for ln in msg.splitlines()[1:]]
    assert len(broken) == 2 and all('no area; dropped' in ln for ln in broken)
    assert {Path(ln.split(':')[0].strip()).name for ln in broken} == {'BloodImage_00338.xml', 'BloodImage_00343.xml'}
    # An independent count of the boxes: every <object> of the 364 files, less the two dropped.
    import xml.etree.ElementTree as ET

    objects = sum(len(ET.parse(p).getroot().findall('object')) for p in (root / 'BCCD' / 'Annotations').glob('*.xml'))
    assert sum(len(r.classes) for r in train + test) == objects - 2
    assert all(r.boxes.min() >= 0 and (r.boxes[:, 2] <= r.width).all() and (r.boxes[:, 3] <= r.height).all()
               for r in train + test)
