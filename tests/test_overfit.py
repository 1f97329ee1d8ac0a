"""Overfitting 4 images: the loss falls and the detector finds their digits (VOC mAP@0.5 on those images)."""

import functools

import jax
import numpy as np
import pytest

from configs.mnist import get_config
from yolo_jax import input_pipeline, steps, train
from yolo_jax.evaluation.metrics import compute_metrics
from yolo_jax.evaluation.runner import collect_detections
from yolo_jax.loss import loss_kwargs
from yolo_jax.postprocess import postprocess_config


@pytest.mark.slow
def test_overfit_four_images_finds_digits(tmp_path):
    config = get_config('smoke')
    config.model.input_size = 160  # digits of 14-112 px on the 416 canvas become 5-43 px
    config.model.width_multiplier = 0.25
    config.model.bn_momentum = 0.5  # running statistics catch up within the short run
    config.data.data_dir = str(tmp_path)
    config.data.digit_source = 'sklearn'
    config.data.num_train, config.data.num_test = 4, 4
    config.data.augment = False
    config.train.warmup_epochs = 0
    config.train.lr_init, config.train.lr_end = 2e-3, 2e-3
    config.eval.score_threshold = 0.3

    model, lr_fn, state = steps.build_model_and_state(config, 1)
    data = input_pipeline.Data(config)
    step = jax.jit(functools.partial(steps.train_step, loss_kw=loss_kwargs(data.spec, config.loss), lr_fn=lr_fn))
    batch = next(data.eval_batches(4, 'train'))
    feed = {k: batch[k] for k in train.STEP_KEYS}
    losses = []
    for _ in range(150):
        state, metrics = step(state, feed)
        losses.append(float(metrics['total']))
    assert np.mean(losses[-10:]) < 0.1 * np.mean(losses[:10]), (losses[:3], losses[-3:])

    cfg = postprocess_config(config, data.spec)
    variables = jax.device_get(state.variables)
    dets, gts = collect_detections(cfg, model, variables, data.eval_batches(4, 'train'))
    result = compute_metrics(dets, gts, data.spec.num_classes, coco=False)
    assert result['num_gt'] >= 4
    assert result['map50'] > 0.8, result['per_class']
