"""MNIST detection config, faithful to the TF2 reference (pythonlessons TensorFlow-2.x-YOLOv3).

Variants, selected after a colon:
    configs/mnist.py         the reference's settings: YOLOv3, 416 input, batch 4, 100 epochs (a GPU run).
    configs/mnist.py:quick   a small, fast variant that trains on 2 CPU cores in about half an hour.

Every field can be overridden on the command line, e.g. `--config.model.input_size=320`.
"""

import ml_collections

from yolo_jax.defaults import model_config


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """Returns the MNIST config; `variant` is the text after the colon in `--config=configs/mnist.py:quick`."""
    config = ml_collections.ConfigDict()
    config.model = model_config('yolov3', num_classes=10, input_size=416)

    config.loss = ml_collections.ConfigDict()
    config.loss.ignore_thresh = 0.5  # background cells whose best IoU with a ground truth >= this are ignored

    config.data = ml_collections.ConfigDict()
    config.data.dataset = 'mnist_detection'  # or 'annotations', 'coco_json', 'yolo_txt', 'voc/2007', 'coco/2017'
    config.data.data_dir = ''  # '' = ~/tensorflow_datasets (or $TFDS_DATA_DIR)
    config.data.digit_source = 'auto'  # 'auto', 'tfds', 'sklearn', or a path to a folder/zip/IDX dir
    config.data.num_train = 1000
    config.data.num_test = 200
    config.data.image_size = 416  # side of the generated MNIST canvas
    config.data.generator_seed = 0
    # 'overwrite' = the reference (a later patch's white margin may hide an earlier digit); 'darken' keeps both.
    config.data.generator_paste = 'overwrite'
    config.data.train_annotations = ''  # for dataset='annotations': `path x1,y1,x2,y2,cls ...` text files
    config.data.test_annotations = ''
    config.data.class_names = ''  # one class name per line
    # For dataset='coco_json' (train/test_annotations = the JSON files; '' = the JSON's folder) and 'yolo_txt'
    # (image folders or list files; labels in the sibling labels/ folder or beside each image).
    config.data.train_images = ''
    config.data.test_images = ''
    config.data.augment = True  # random flip, crop and translate, each with p=0.5
    config.data.resize = 'letterbox'  # or 'stretch' (resize to the square input ignoring the aspect ratio)
    config.data.label_smoothing = 0.01
    config.data.positive_iou = 0.3  # anchors with IoU > this are responsible for a box
    config.data.max_bbox_per_scale = 100
    config.data.max_boxes = 100  # ground-truth boxes kept per image (padded), for evaluation
    config.data.shuffle_buffer = 1000
    config.data.cache = True
    config.data.num_threads = 0  # tf.data threads; 0 = every CPU this process may use

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 4  # global batch, split over devices
    config.train.eval_batch_size = 4
    config.train.epochs = 100
    config.train.warmup_epochs = 2
    config.train.lr_init = 1e-4
    config.train.lr_end = 1e-6
    config.train.adam_eps = 1e-7  # Keras' default, as the reference (optax's is 1e-8)
    config.train.grad_clip_norm = 0.0  # 0 disables clipping
    config.train.seed = 0
    config.train.parallel = 'none'  # 'none', 'pmap' or 'mesh'
    config.train.init_from = ''  # a Darknet .weights file or an orbax checkpoint directory
    config.train.freeze = 'none'  # 'none', 'backbone' or 'all_but_heads'
    config.train.save_best_only = True
    config.train.log_every_steps = 10
    config.train.eval_every_epochs = 1
    config.train.map_every_epochs = 0  # 0 = VOC mAP only after training
    config.train.steps_per_epoch = -1  # -1 = one pass over the training split
    config.train.distributed = False  # call jax.distributed.initialize() (multi-host)
    config.train.bn_recalibration_batches = 0  # > 0: recompute BatchNorm statistics on this many batches per epoch
    config.train.checkpoint_every_steps = 50  # also save mid-epoch, for exact resume after a crash (0: epochs only)
    config.train.debug_nan_at_step = -1  # >= 0 poisons the loss at that step (tests the NaN guard)
    config.train.debug_kill_at_step = -1  # >= 1 SIGKILLs the process after that step (tests exact resume)

    config.eval = ml_collections.ConfigDict()
    config.eval.score_threshold = 0.3
    config.eval.nms_iou_threshold = 0.45
    config.eval.nms_method = 'nms'  # or 'soft_nms'
    config.eval.soft_nms_sigma = 0.3
    config.eval.max_detections = 100
    config.eval.fold_batchnorm = True  # eval/detect: BatchNorm folded into the convs (same outputs, faster)
    # The evaluation protocol (mAP), separate from the drawing threshold above (VOC/COCO practice).
    config.eval.map_score_threshold = 0.005  # detections kept for mAP
    config.eval.map_max_detections = 100  # per image after NMS (COCO's maxDets)
    config.eval.voc_metric = 'all_point'  # or '11_point' (VOC2007 test)
    config.eval.voc_truncate_boxes = True  # the reference's int() of detection corners; False = the devkit
    config.eval.split = 'test'  # --mode=eval split: 'train', 'test' or a split name of the TFDS set

    for name in (variant or '').split(','):
        if name not in VARIANTS:
            raise ValueError(f'configs/mnist.py: unknown variant {name!r}; expected a comma-separated subset of '
                             f'{sorted(v for v in VARIANTS if v)}')
        VARIANTS[name](config)
    return config


def _make_quick(config: ml_collections.ConfigDict) -> None:
    """A CPU-sized variant: YOLOv3 at a quarter of its width and 256 px input (~20 img/s on 2 cores), 25 epochs."""
    config.model.input_size = 256
    config.model.width_multiplier = 0.25
    # Thin layers initialised at stddev 0.01 move fast at lr 1e-3: BatchNorm's moving averages lag the weights
    # (validation loss 3-6x the training loss in a trial run). Recompute them at each epoch's end instead.
    config.train.bn_recalibration_batches = 25
    config.train.batch_size = 8
    config.train.eval_batch_size = 8
    config.train.epochs = 25
    config.train.lr_init = 1e-3
    config.train.lr_end = 1e-5
    config.train.warmup_epochs = 1
    config.train.map_every_epochs = 5
    config.train.log_every_steps = 25


def _make_tiny(config: ml_collections.ConfigDict) -> None:
    """YOLOv3-tiny (strides 16, 32) instead of YOLOv3."""
    m = model_config('yolov3_tiny', num_classes=config.model.num_classes, input_size=config.model.input_size)
    m.update({k: config.model[k] for k in ('bn_momentum', 'bn_epsilon', 'width_multiplier', 'dtype', 'conv_impl')})
    config.model = m


def _make_smoke(config: ml_collections.ConfigDict) -> None:
    """Seconds-long runs for tests and smoke checks: a few tiny images, a narrow network, two epochs."""
    config.model.input_size = 64
    config.model.width_multiplier = 0.125
    config.data.num_train = 16
    config.data.num_test = 8
    config.data.shuffle_buffer = 16
    config.train.batch_size = 4
    config.train.eval_batch_size = 4
    config.train.epochs = 2
    config.train.warmup_epochs = 1
    config.train.lr_init = 1e-3
    config.train.log_every_steps = 1
    config.train.checkpoint_every_steps = 2


VARIANTS = {'': lambda c: None, 'quick': _make_quick, 'tiny': _make_tiny, 'smoke': _make_smoke}
