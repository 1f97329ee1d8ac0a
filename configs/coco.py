"""MS COCO 2017: train on train2017 (118k images), evaluate on val2017 (5k images) with COCOeval (mAP@[.5:.95],
crowd regions ignored; at most 100 detections per image, score >= 0.001).

    python -m yolo_jax.main --config=configs/coco.py --workdir=DIR --config.data.data_dir=TFDS_DIR

Variants after a colon: 'tiny' = YOLOv3-tiny exactly as Darknet's yolov3-tiny.cfg with Darknet's BatchNorm epsilon,
ready for the official weights (`--mode=eval --weights=yolov3-tiny.weights`); plus configs/mnist.py's 'quick' and
'smoke'. Data: the prepared TFDS set `coco/2017` (`tfds build coco/2017 --data_dir=TFDS_DIR`), or the same data as
COCO JSON: `--config.data.dataset=coco_json --config.data.test_annotations=instances_val2017.json
--config.data.test_images=val2017/` (and train_* likewise).
"""

import ml_collections

from yolo_jax.defaults import apply_variants, default_config


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """The COCO config; `variant` as configs/mnist.py's (defaults.VARIANTS, applied after the COCO settings)."""
    config = default_config()
    config.model.num_classes = 80
    config.model.input_size = 416  # Darknet's published figures are at 416 (also 320 and 608)
    config.model.bn_epsilon = 1e-5  # Darknet's, so its .weights load as they were trained

    config.data.dataset = 'coco/2017'  # train -> 'train' (train2017), test -> 'validation' (val2017)
    config.data.cache = False  # ~60 GB decoded: stream instead
    config.data.check_at_start = False  # a full extra pass over the data; run python -m yolo_jax.data.check
    config.data.shuffle_buffer = 4096
    config.data.max_boxes = 100  # val2017 has at most 63 boxes per image; train2017 a few more are cut

    config.train.batch_size = 64
    config.train.eval_batch_size = 16
    config.train.epochs = 273  # Darknet's 500,200 iterations of 64 images
    config.train.warmup_epochs = 2
    config.train.lr_init = 1e-3
    config.train.lr_end = 1e-5
    config.train.map_every_epochs = 10
    config.train.log_every_steps = 100
    config.train.checkpoint_every_steps = 2000

    config.eval.map_score_threshold = 0.001
    config.eval.map_max_detections = 100  # COCOeval's maxDets
    config.eval.voc_metric = 'all_point'
    config.eval.voc_truncate_boxes = False
    config.eval.split = 'test'
    return apply_variants(config, variant, 'configs/coco.py')
