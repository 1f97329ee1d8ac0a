"""The detection problem in one frozen object: input size, strides, anchors, classes.

`DetectionSpec` is built once (from the config and the data set, or from a checkpoint's metadata) and handed to
target encoding, the loss, post-processing, evaluation and detection, so they cannot disagree. The data set is
the authority on classes: a config whose `model.num_classes` differs is an error naming both values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import ml_collections

from yolo_jax.errors import ConfigError

Anchors = tuple[tuple[tuple[float, float], ...], ...]


@dataclasses.dataclass(frozen=True)
class DetectionSpec:
    """What a detector predicts and at which resolution.

    input_size: square network input side in pixels (a multiple of the largest stride).
    strides: output strides, ascending (pixels per grid cell).
    anchors: per scale, (w, h) of each anchor in input pixels.
    class_names: one name per class, in output order.
    scale_xy: Darknet's scale_x_y per scale for decoding box centres (1.0 = YOLOv3's decoding).
    """

    input_size: int
    strides: tuple[int, ...]
    anchors: Anchors
    class_names: tuple[str, ...]
    scale_xy: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.scale_xy:
            object.__setattr__(self, 'scale_xy', (1.0,) * len(self.strides))
        self._check()

    def _check(self) -> None:
        if len(self.anchors) != len(self.strides) or len(self.scale_xy) != len(self.strides):
            raise ConfigError(f'config.model.anchors / scale_xy: {len(self.anchors)} / {len(self.scale_xy)} scales '
                              f'but config.model.strides has {len(self.strides)}')
        if len({len(a) for a in self.anchors}) != 1:
            raise ConfigError('config.model.anchors: every scale needs the same number of anchors')
        if self.input_size <= 0 or self.input_size % max(self.strides):
            raise ConfigError(f'config.model.input_size={self.input_size} must be a positive multiple of '
                              f'{max(self.strides)} (the largest stride)')
        if not self.class_names:
            raise ConfigError('the data set names no classes')

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_anchors(self) -> int:
        """Anchors per scale."""
        return len(self.anchors[0])

    @property
    def grid_sizes(self) -> tuple[int, ...]:
        """Output grid side per scale (cells)."""
        return tuple(self.input_size // s for s in self.strides)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (stored in checkpoint metadata)."""
        return {'input_size': self.input_size, 'strides': list(self.strides),
                'anchors': [[list(a) for a in scale] for scale in self.anchors],
                'class_names': list(self.class_names), 'scale_xy': list(self.scale_xy)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DetectionSpec:
        return cls(int(d['input_size']), tuple(int(s) for s in d['strides']),
                   tuple(tuple((float(w), float(h)) for w, h in scale) for scale in d['anchors']),
                   tuple(str(n) for n in d['class_names']), tuple(float(k) for k in d['scale_xy']))


def check_num_classes(config_num_classes: int, class_names: Sequence[str], source: str) -> None:
    """ConfigError naming both values when config.model.num_classes disagrees with the data set's classes."""
    if int(config_num_classes) != len(class_names):
        raise ConfigError(
            f'config.model.num_classes={config_num_classes} but {source} has {len(class_names)} classes; '
            f'set --config.model.num_classes={len(class_names)}')


def build_spec(model_config: ml_collections.ConfigDict, class_names: Sequence[str], source: str) -> DetectionSpec:
    """The spec for `model_config` and the data set's `class_names` (`source` names where they came from)."""
    check_num_classes(model_config.num_classes, class_names, source)
    return DetectionSpec(
        input_size=int(model_config.input_size),
        strides=tuple(int(s) for s in model_config.strides),
        anchors=tuple(tuple((float(w), float(h)) for w, h in scale) for scale in model_config.anchors),
        class_names=tuple(str(n) for n in class_names),
        scale_xy=tuple(float(k) for k in model_config.scale_xy),
    )
