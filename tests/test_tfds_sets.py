"""configs/voc.py and configs/coco.py: their settings, a fast and explicit failure when the TFDS set is not
prepared, and end to end offline through tfds.testing.mock_data: VOC07+12 training for a few steps then the VOC07
protocol evaluation, COCO evaluation with crowd regions — each checked against the devkit / pycocotools oracles on
the mock examples' own boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import coco as coco_config
from configs import voc as voc_config
from yolo_jax.data import sources

REPO = Path(__file__).resolve().parents[1]


def test_configs():
    voc = voc_config.get_config()
    assert (voc.data.dataset, voc.model.num_classes, voc.model.input_size) == ('voc/2007+voc/2012', 20, 416)
    assert (voc.eval.voc_metric, voc.eval.voc_truncate_boxes, voc.eval.map_score_threshold) == ('11_point', False,
                                                                                               0.005)
    coco = coco_config.get_config()
    assert (coco.data.dataset, coco.model.num_classes, coco.model.input_size) == ('coco/2017', 80, 416)
    assert (coco.eval.map_score_threshold, coco.eval.map_max_detections) == (0.001, 100)
    tiny = coco_config.get_config('tiny')
    assert (tiny.model.name, tiny.model.bn_epsilon, tiny.model.num_classes, tiny.model.strides) == (
        'yolov3_tiny', 1e-5, 80, (16, 32))
    assert voc_config.get_config('tiny,smoke').model.input_size == 64
    with pytest.raises(ValueError, match='unknown variant'):
        coco_config.get_config('huge')
    # Class names come from the builders' code (no data needed) and agree with the configs' class counts.
    assert len(sources.get_class_names(voc)) == voc.model.num_classes
    assert len(sources.get_class_names(coco)) == coco.model.num_classes


@pytest.mark.parametrize('module, split, command', [
    (voc_config, 'train', 'tfds build voc/2007 voc/2012'), (voc_config, 'test', 'tfds build voc/2007'),
    (coco_config, 'train', 'tfds build coco/2017'), (coco_config, 'validation', 'tfds build coco/2017'),
])
def test_unprepared_set_fails_fast_with_the_build_command(module, split, command, tmp_path):
    from yolo_jax import input_pipeline

    config = module.get_config()
    config.data.data_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match=command) as e:
        if split == 'train':
            input_pipeline.Data(config).steps_per_epoch(config.train.batch_size)  # what training calls first
        else:
            sources.load_split(config, split)
    assert not [p for p in tmp_path.rglob('*') if p.is_file()]  # it failed before downloading anything
    assert str(tmp_path) in str(e.value) and 'downloads' in str(e.value)


def _consistent(example: dict) -> dict:
    """mock_data draws every objects/* field with its own length and unordered corners; real data has one length
    per image and ymin <= ymax, xmin <= xmax."""
    objects = example['objects']
    n = tf.reduce_min([tf.shape(v)[0] for v in objects.values()])
    objects = {k: v[:n] for k, v in objects.items()}
    b = objects['bbox']
    lo, hi = tf.minimum(b[:, :2], b[:, 2:]), tf.maximum(b[:, :2], b[:, 2:])
    objects['bbox'] = tf.concat([lo, tf.maximum(hi, lo + 0.05)], axis=-1)  # at least 5% of the side
    objects['bbox'] = tf.minimum(objects['bbox'], 1.0)
    return {**example, 'objects': objects}


@pytest.fixture
def mock_tfds(monkeypatch):
    with tfds.testing.mock_data(num_examples=8):
        original = tfds.core.DatasetBuilder.as_dataset

        def as_dataset(self, *args, **kwargs):
            return original(self, *args, **kwargs).map(_consistent)

        monkeypatch.setattr(tfds.core.DatasetBuilder, 'as_dataset', as_dataset)
        yield original


def _raw_ground_truth(original, name: str, split: str, flag: str) -> list[dict]:
    """The mock split's examples as the evaluation sees them: boxes in pixels, flags as difficult/iscrowd."""
    out = []
    for ex in tfds.as_numpy(original(tfds.builder(name), split=split).map(_consistent)):
        h, w = ex['image'].shape[:2]
        ymin, xmin, ymax, xmax = ex['objects']['bbox'].T
        flags = ex['objects'][flag].astype(bool)
        out.append({'boxes': np.stack([xmin * w, ymin * h, xmax * w, ymax * h], 1).astype(np.float64),
                    'classes': ex['objects']['label'].astype(int), 'difficult': flags, 'iscrowd': flags,
                    'height': h, 'width': w})
    return out


@pytest.mark.slow
def test_voc_07_12_trains_and_evaluates_with_the_voc07_protocol(mock_tfds, tmp_path):
    from test_eval_protocol import devkit_voc_eval

    from yolo_jax import train
    from yolo_jax.evaluation.command import evaluate_checkpoint

    config = voc_config.get_config('tiny,smoke')
    config.data.data_dir = str(tmp_path / 'tfds')
    config.train.epochs = 1
    config.eval.map_score_threshold = 0.0001
    # Train split: voc/2007 and voc/2012 train+validation, 8 mock examples each → 16 images, 4 steps of 4.
    _, info = sources.load_split(config, 'train')
    assert info.num_examples == 16 and len(info.class_names) == 20
    train.train_and_evaluate(config, str(tmp_path / 'run'))
    records = [json.loads(x) for x in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
    assert max(r['step'] for r in records if r['kind'] == 'train') == 4
    metrics = evaluate_checkpoint(config, tmp_path / 'run', output=tmp_path / 'eval')

    gts = _raw_ground_truth(mock_tfds, 'voc/2007', 'test', 'is_difficult')
    assert metrics['num_images'] == 8
    assert metrics['num_ignored'] == sum(int(g['difficult'].sum()) for g in gts) > 0
    assert metrics['num_gt'] == sum(int((~g['difficult']).sum()) for g in gts)
    dets = json.loads((tmp_path / 'eval' / 'detections.json').read_text())
    dets = [{k: np.asarray(v) for k, v in d.items() if k != 'image_id'} for d in dets]
    assert sum(len(d['scores']) for d in dets) > 0
    for entry in metrics['per_class']:
        if entry['ap'] is not None:
            want = devkit_voc_eval(dets, gts, entry['class'], use_07_metric=True)
            assert entry['ap'] == pytest.approx(want, abs=1e-6), entry


@pytest.mark.slow
def test_coco_evaluation_with_crowd_regions(mock_tfds, tmp_path):
    from test_detect import make_workdir
    from test_eval_protocol import coco_oracle

    from yolo_jax.evaluation.command import evaluate_checkpoint
    from yolo_jax.evaluation.metrics import COCO_STATS

    config = coco_config.get_config('tiny,smoke')
    config.data.data_dir = str(tmp_path / 'tfds')
    config.eval.map_score_threshold = 0.0001
    workdir = make_workdir(tmp_path / 'run', config)
    config.eval.split = 'validation'
    metrics = evaluate_checkpoint(config, workdir, output=tmp_path / 'eval')
    gts = _raw_ground_truth(mock_tfds, 'coco/2017', 'validation', 'is_crowd')
    assert metrics['num_ignored'] == sum(int(g['iscrowd'].sum()) for g in gts) > 0
    dets = json.loads((tmp_path / 'eval' / 'detections.json').read_text())
    dets = [{k: np.asarray(v) for k, v in d.items() if k != 'image_id'} for d in dets]
    assert sum(len(d['scores']) for d in dets) > 0
    # The oracle maps our classes to COCO-like ids (1, 18, 90 for three classes): use all 80 as 1..80 here.
    import test_eval_protocol

    ids = test_eval_protocol.COCO_CAT_IDS
    try:
        test_eval_protocol.COCO_CAT_IDS = tuple(range(1, 81))
        want = coco_oracle(dets, gts)
    finally:
        test_eval_protocol.COCO_CAT_IDS = ids
    got = [metrics['coco'][k] if not np.isnan(metrics['coco'][k]) else -1.0 for k in COCO_STATS]
    assert got == pytest.approx(want, abs=1e-12)
