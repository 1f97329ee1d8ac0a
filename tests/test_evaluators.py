"""The evaluators (yolo_jax/evaluation/): built once from the config, every config.eval field they read checked
when they are built, so a bad field ends a run before its first step; the mAP evaluator's numbers equal the
metric functions' on the same detections."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import spec_of
from test_bad_inputs import assert_untouched, new_workdir, run_cli, snapshot

from configs.mnist import get_config
from yolo_jax import errors
from yolo_jax.evaluation.detection import SCALARS, DetectionMetrics, check_eval_config
from yolo_jax.evaluation.metrics import compute_metrics, format_table
from yolo_jax.evaluation.runner import collect_detections
from yolo_jax.postprocess import map_postprocess_config

SMOKE = 'configs/mnist.py:tiny,smoke'

# (field, bad value as on the command line, the value as the config holds it, regex for the error's text)
BAD_FIELDS = [
    ('voc_metric', 'elevenpoint', 'elevenpoint',
     r"config\.eval\.voc_metric: unknown metric 'elevenpoint'; expected one of \('all_point', '11_point'\)$"),
    ('nms_method', 'x', 'x', r"config\.eval\.nms_method: unknown method 'x'; expected one of \('nms', 'soft_nms'\)$"),
    ('max_detections', '0', 0, r'config\.eval\.max_detections must be >= 1, got 0$'),
    ('map_max_detections', '0', 0, r'config\.eval\.map_max_detections must be >= 1, got 0$'),
    ('score_threshold', '1.5', 1.5, r'config\.eval\.score_threshold=1\.5 must be in \[0, 1\]$'),
    ('map_score_threshold', '-0.1', -0.1, r'config\.eval\.map_score_threshold=-0\.1 must be in \[0, 1\]$'),
    ('nms_iou_threshold', 'nan', math.nan, r'config\.eval\.nms_iou_threshold=nan must be in \[0, 1\]$'),
    ('soft_nms_sigma', '0.0', 0.0, r'config\.eval\.soft_nms_sigma=0\.0 must be > 0$'),
    ('tta', "('turn',)", ('turn',),
     r"config\.eval\.tta: expected distinct names from \('hflip', 'vflip', 'hvflip'\) \(e\.g\. \('hflip',\)\), got "
     r"\('turn',\)$"),
    ('tta_sizes', '(100,)', (100,),
     r"config\.eval\.tta_sizes: expected distinct multiples of 32 other than the input size 64 \(e\.g\. \(128,\)\), "
     r"got \(100,\)$"),
    ('tta_vote_iou', '1.0', 1.0, r'config\.eval\.tta_vote_iou=1\.0 must be in \[0, 1\) \(0: off\)$'),
]


@pytest.mark.parametrize('field, _, value, message', BAD_FIELDS, ids=[f[0] for f in BAD_FIELDS])
def test_detection_evaluator_checks_each_field_when_built(field, _, value, message):
    config = get_config('tiny,smoke')
    check_eval_config(config)  # the defaults pass
    config.eval[field] = value
    with pytest.raises(errors.ConfigError, match=message):
        DetectionMetrics(config, spec_of(config), model=None, batches=list)


def test_detection_evaluator_settings_come_from_config():
    config = get_config('tiny,smoke')
    config.eval.nms_method = 'soft-nms'  # the reference's spelling
    config.eval.voc_metric, config.eval.voc_truncate_boxes = '11_point', False
    config.eval.map_score_threshold, config.eval.map_max_detections = 0.01, 7
    config.eval.score_threshold, config.eval.max_detections = 0.4, 3
    evaluator = DetectionMetrics(config, spec_of(config), model=None, batches=list)
    assert (evaluator.map_cfg.score_threshold, evaluator.map_cfg.max_detections) == (0.01, 7)
    assert (evaluator.draw_cfg.score_threshold, evaluator.draw_cfg.max_detections) == (0.4, 3)
    assert evaluator.map_cfg.method == evaluator.draw_cfg.method == 'soft_nms'
    assert evaluator.voc_options == {'use_07_metric': True, 'truncate_detections': False}


def test_detection_evaluator_equals_the_metric_functions(tmp_path_factory):
    """DetectionMetrics.evaluate on a checkpoint's model: its metrics are compute_metrics of collect_detections
    with the mAP settings (an independent assembly of the same pieces), its scalars and table follow."""
    from test_detect import make_workdir, small_config
    from test_evaluation import SPECS, make_batches

    from yolo_jax import inference

    config = small_config()
    config.eval.voc_metric = '11_point'
    workdir = make_workdir(tmp_path_factory.mktemp('workdir'), config)
    model, variables, spec = inference.load_detector(config, workdir, fold=False)
    batches = make_batches(config, SPECS)
    result = DetectionMetrics(config, spec, model, lambda: iter(batches), draw_images=2).evaluate(variables)

    dets, gts = collect_detections(map_postprocess_config(config, spec), model, variables, batches)
    want = compute_metrics(dets, gts, spec.num_classes, use_07_metric=True)
    assert result.kind == 'map' and result.metrics['num_images'] == 3
    assert result.metrics['map50'] == want['map50'] and result.metrics['coco_map'] == want['coco_map']
    assert result.scalars == {k: float(want[k]) for k in SCALARS}
    assert result.details == format_table(want, spec.class_names)
    assert [d['image_id'] for d in result.artifacts['detections']] == [100, 101, 102]
    for got, expected in zip(result.artifacts['detections'], dets, strict=True):
        np.testing.assert_array_equal(got['boxes'], expected['boxes'])
    grid = result.images['detections']
    assert grid.ndim == 4 and grid.shape[0] == 1 and grid.shape[-1] == 3 and grid.dtype == np.uint8
    assert re.fullmatch(r'mAP@0\.5 \(VOC\): \d\.\d{4}, mAP@\[\.5:\.95\] \(COCO\): \d\.\d{4}', result.summary)


_MESSAGES = {f: m for f, _, _, m in BAD_FIELDS}
CLI = [('train', 'voc_metric', 'elevenpoint'), ('train', 'nms_method', 'x'), ('train', 'max_detections', '0'),
       ('eval', 'voc_metric', 'elevenpoint'), ('eval', 'tta', "('turn',)"), ('eval', 'tta_sizes', '(100,)'),
       ('train', 'tta_vote_iou', '1.0')]


@pytest.mark.parametrize('mode, field, value', CLI, ids=[f'{m}-{f}' for m, f, _ in CLI])
def test_bad_eval_field_ends_the_command_before_any_step(mode, field, value, tmp_path):
    """Through `python -m yolo_jax.main`: exit 2, one `error:` line naming the field, no traceback, no training
    step logged, no data set built (the check runs before the data is opened) and the workdir untouched."""
    workdir = new_workdir(tmp_path)
    before = snapshot(workdir)
    proc = run_cli([f'--config={SMOKE}', f'--workdir={workdir}', f'--mode={mode}', f'--config.eval.{field}={value}',
                    '--config.data.digit_source=sklearn', f'--config.data.data_dir={tmp_path / "tfds"}'], {})
    assert proc.returncode == errors.EXIT_CODE, f'exit code {proc.returncode}\n{proc.stderr[-3000:]}'
    error_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('error: ')]
    assert len(error_lines) == 1 and re.search('^error: ' + _MESSAGES[field], error_lines[0]), proc.stderr[-3000:]
    assert 'Traceback (most recent call last)' not in proc.stderr
    assert not re.search(r'epoch: *\d+ step:', proc.stderr), proc.stderr[-3000:]
    assert not [p for p in Path(tmp_path / 'tfds').rglob('*') if p.is_file()]
    assert_untouched(before, workdir)


@pytest.mark.slow
def test_two_processes_evaluate_as_one(tmp_path):
    """--mode=eval in two processes (x 2 devices, localhost): each evaluates its shard, the detections are gathered
    and process 0 writes the files, which hold what one process computes on the whole split."""
    import json
    import subprocess

    from test_detect import make_workdir
    from test_parallel import REPO, _cmd, _env, _log, _start_pair, _wait

    workdir = make_workdir(tmp_path / 'run', get_config('tiny,smoke'))
    data_dir = tmp_path / 'tfds'
    proc = subprocess.run(_cmd(workdir, data_dir, '--mode=eval', f'--output={tmp_path / "one"}'), cwd=REPO,
                          env=_env(1), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes = _wait(_start_pair(workdir, data_dir, '--mode=eval', f'--output={tmp_path / "two"}'), timeout=900)
    assert codes == [0, 0], _log(workdir, 0)[-3000:] + _log(workdir, 1)[-3000:]
    one, two = (json.loads((tmp_path / d / 'metrics.json').read_text())['metrics'] for d in ('one', 'two'))
    assert one['num_images'] == two['num_images'] == 8 and one['num_detections'] > 0
    assert two['num_detections'] == one['num_detections'] and two['num_gt'] == one['num_gt']
    assert two['map50'] == pytest.approx(one['map50'], abs=1e-6)
    assert two['coco_map'] == pytest.approx(one['coco_map'], abs=1e-6)
    dets_one, dets_two = (json.loads((tmp_path / d / 'detections.json').read_text()) for d in ('one', 'two'))
    assert [d['image_id'] for d in dets_two] == [f'{p}/{i}' for p in range(2) for i in range(4)]
    for a, b in zip(dets_one, dets_two, strict=True):  # process 0 holds the first half of the split
        np.testing.assert_allclose(b['boxes'], a['boxes'], atol=1e-3)
        np.testing.assert_allclose(b['scores'], a['scores'], atol=1e-5)
