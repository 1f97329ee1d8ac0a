"""Loading a trained model and running it: `load_variables`, the jitted `predict`, and class names.

`predict` = forward pass (BatchNorm in inference mode) + post-processing (postprocess.py) in one jitted program;
the letterbox parameters are computed on the host from the original sizes, so nothing inside jit touches TF.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from yolo_jax import checkpointing
from yolo_jax import postprocess as pp
from yolo_jax.errors import ConfigError, MissingFileError
from yolo_jax.models import create_model, fold_variables

COCO_CLASS_NAMES = (
    'person', 'bicycle', 'car', 'motorbike', 'aeroplane', 'bus', 'train', 'truck', 'boat', 'traffic light',
    'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
    'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee',
    'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
    'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple',
    'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'sofa',
    'pottedplant', 'bed', 'diningtable', 'toilet', 'tvmonitor', 'laptop', 'mouse', 'remote', 'keyboard',
    'cell phone', 'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors',
    'teddy bear', 'hair drier', 'toothbrush',
)  # Darknet's coco.names, in the order of the 80 outputs of its COCO weights


def output_dir(output: str | Path | None, workdir: str | Path | None, mode: str) -> Path:
    """Where `--mode=MODE` writes: `output` if given, else WORKDIR/MODE; created if missing."""
    if output is None:
        if workdir is None:
            raise ConfigError(f'{mode}: pass output= when there is no workdir')
        output = Path(workdir) / mode
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    return output


def class_names(config: ml_collections.ConfigDict) -> list[str]:
    """Names of the config.model.num_classes classes: config.data.class_names (a file, one name per line) if set,
    else COCO's names for 80 classes, else '0', '1', ... (the MNIST digits)."""
    n = int(config.model.num_classes)
    path = config.data.get('class_names', '') if 'data' in config else ''
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise MissingFileError(f'config.data.class_names: no such file {p}')
        names = [line.strip() for line in p.read_text().splitlines() if line.strip()]
        if len(names) != n:
            raise ConfigError(f'config.data.class_names: {p} lists {len(names)} names but config.model.num_classes={n}')
        return names
    if n == len(COCO_CLASS_NAMES):
        return list(COCO_CLASS_NAMES)
    return [str(i) for i in range(n)]


def _output_classes(shapes: dict, model: Any, num_anchors: int) -> dict[str, int]:
    """{output conv: number of classes its kernel predicts} from a params tree of arrays or metadata (.shape)."""
    out = {}
    for name in model.output_convs:
        try:
            features = int(shapes['head'][name]['kernel'].shape[-1])
        except (KeyError, TypeError, AttributeError):
            continue
        out[name] = features // num_anchors - 5
    return out


def check_num_classes(params: dict, model: Any, model_config: ml_collections.ConfigDict, source: str) -> None:
    """Raises a ValueError naming both numbers when `params` (arrays or shape metadata) predict a different number
    of classes than config.model.num_classes."""
    num_anchors = len(model_config.anchors[0])
    found = set(_output_classes(params, model, num_anchors).values())
    if found and found != {int(model_config.num_classes)}:
        got = ', '.join(str(c) for c in sorted(found))
        raise ConfigError(
            f'{source} predicts {got} classes but config.model.num_classes={model_config.num_classes}; '
            f'use --config.model.num_classes={got} (and matching config.data.class_names) to load it'
        )


def _read_only_manager(directory: Path) -> ocp.CheckpointManager:
    """A manager that never writes or cleans up (safe while a training run writes to the same directory)."""
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    return ocp.CheckpointManager(directory, options=options, item_names=('state', 'meta'))


def _restore_target(config: ml_collections.ConfigDict) -> Any:
    """The abstract (shape-only) TrainState the checkpoint is restored into, built as training builds it."""
    from yolo_jax import train  # noqa: PLC0415  (pulls in the loss and optimizer code: only when restoring)

    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.train.init_from = ''  # the checkpoint replaces any initial weights: don't load them just to discard them
    return jax.eval_shape(lambda: train.build_model_and_state(cfg, 1, 'none')[2])


def load_variables(
    config: ml_collections.ConfigDict, workdir: str | Path | None, weights: str | Path | None = None, *,
    fold: bool = False,
) -> tuple[Any, dict]:
    """(model, variables) for inference: {'params', 'batch_stats'}, or with `fold` the BatchNorm-folded model
    and its {'params'} (same outputs, fewer ops; models.fold_batchnorm). eval/detect pass
    config.eval.fold_batchnorm.

    With `weights`: a Darknet .weights file (yolo_jax.darknet). Otherwise the best checkpoint in
    workdir/checkpoints (lowest validation loss), falling back to the latest. Raises FileNotFoundError for a
    missing workdir, checkpoint or weights file, and ValueError when the checkpoint's class count (from its
    output convolutions) or architecture differs from config.model.
    """
    model = create_model(config.model)
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise MissingFileError(f'--weights: no such file {path}')
        from yolo_jax import darknet  # noqa: PLC0415  (optional feature, imported on demand)

        variables = darknet.load_weights(str(path), config.model)
        check_num_classes(variables['params'], model, config.model, f'Darknet weights {path}')
        variables = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
        return _maybe_fold(fold, config, model, variables)

    if workdir is None or not Path(workdir).is_dir():
        raise MissingFileError(f'workdir {workdir} does not exist: train first (--mode=train) or pass --weights=FILE')
    directory = Path(workdir).absolute() / 'checkpoints'
    if not directory.is_dir():
        raise MissingFileError(f'no checkpoint in {workdir}: {directory} does not exist (train first, or pass '
                                '--weights=FILE)')
    manager = _read_only_manager(directory)
    step = checkpointing.best_step(manager)
    if step is None:
        step = manager.latest_step()
    if step is None:
        raise MissingFileError(f'no checkpoint in {directory} (train first, or pass --weights=FILE)')
    source = f'checkpoint {directory / str(step)}'
    try:  # cheap metadata read: a clear message before orbax's shape error
        metadata = ocp.StandardCheckpointer().metadata(directory / str(step) / 'state').item_metadata
        check_num_classes(metadata['params'], model, config.model, source)
    except (FileNotFoundError, KeyError, TypeError, AttributeError):
        pass
    try:
        state, _ = checkpointing.restore(manager, step, _restore_target(config))
    except (ValueError, KeyError) as e:
        m = config.model
        raise ConfigError(
            f'{source} does not match config.model (name={m.name}, num_classes={m.num_classes}, '
            f'width_multiplier={m.width_multiplier}, config.train.freeze={config.train.freeze}): {_short_mismatch(e)}; '
            'was it trained with another --config or variant (e.g. :tiny)?'
        ) from e
    return _maybe_fold(fold, config, model, {'params': state.params, 'batch_stats': state.batch_stats})


def _short_mismatch(error: BaseException, limit: int = 300) -> str:
    """orbax's restore error in one short line: its first statement, without the listing of every key in the
    checkpoint that follows a structure mismatch (tens of thousands of characters), at most `limit` characters."""
    cut = r'\.\s*(?:Expected identical structures|Metadata keys|Truncating/padding is disabled)'
    text = re.split(cut, str(error))[0]
    text = ' '.join(text.split()).replace('in metadata_tree', 'in the checkpoint')
    paths = re.sub(r"\('([^)]*)'\)", lambda m: '/'.join(re.findall(r"'([^']*)'", m.group(0))), text)
    return paths if len(paths) <= limit else paths[: limit - 4] + ' ...'


def _maybe_fold(fold: bool, config: ml_collections.ConfigDict, model: Any, variables: dict) -> tuple[Any, dict]:
    if fold:
        return fold_variables(config.model, variables)
    return model, variables


@functools.lru_cache(maxsize=32)
def make_predict_fn(model: Any, cfg: pp.PostprocessConfig) -> Callable[..., pp.Detections]:
    """jit(forward + post-process) for one (model, settings) pair; cached, so repeated calls reuse the compile.

    The returned fn(variables, images (B, S, S, 3) in [0, 1], resize (B, 4), orig_sizes (B, 2) (h, w)) →
    Detections in original-image pixels.
    """

    def fn(variables: dict, images: jax.Array, resize: jax.Array, orig_sizes: jax.Array) -> pp.Detections:
        outputs = model.apply(variables, images, train=False)
        return pp.postprocess(outputs, resize, orig_sizes, cfg)

    return jax.jit(fn)


def predict(
    model: Any,
    variables: dict,
    images: np.ndarray | jax.Array,
    orig_sizes: np.ndarray,
    config: ml_collections.ConfigDict | pp.PostprocessConfig,
) -> pp.Detections:
    """Detections for a batch of network inputs.

    Args:
      model: the Flax module (create_model(config.model)).
      variables: {'params', 'batch_stats'}.
      images: (B, S, S, 3) float32 RGB in [0, 1], letterboxed (or stretched) as the input pipeline does.
      orig_sizes: (B, 2) original (h, w) of each image, host values (NumPy).
      config: the full config (config.model, config.eval, config.data.resize) or a PostprocessConfig.

    Returns:
      Detections (device arrays): boxes (B, K, 4) xyxy in original pixels, scores, classes, valid;
      K = config.eval.max_detections.
    """
    cfg = config if isinstance(config, pp.PostprocessConfig) else pp.PostprocessConfig.from_config(config)
    if images.shape[1:3] != (cfg.input_size, cfg.input_size):
        raise ValueError(f'images are {images.shape[1:3]}, expected config.model.input_size={cfg.input_size}')
    sizes = np.asarray(orig_sizes).reshape(-1, 2)
    resize = pp.resize_params_batch(sizes, cfg.input_size, cfg.resize_mode)
    return make_predict_fn(model, cfg)(variables, images, resize, sizes.astype(np.float32))
