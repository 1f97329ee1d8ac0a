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

    input_size: square network input side in pixels (a multiple of 32, the backbones' downsampling, and of every
      stride).
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
        """The one place geometry is checked (errors name the config.model field that sets it)."""
        if not self.strides or list(self.strides) != sorted(set(self.strides)) or min(self.strides) <= 0:
            raise ConfigError(f'config.model.strides={self.strides}: positive and strictly ascending')
        if len(self.anchors) != len(self.strides) or len(self.scale_xy) != len(self.strides):
            raise ConfigError(f'config.model.anchors / scale_xy: {len(self.anchors)} / {len(self.scale_xy)} scales '
                              f'but config.model.strides has {len(self.strides)}')
        if len({len(a) for a in self.anchors}) != 1 or not self.anchors[0]:
            raise ConfigError('config.model.anchors: need the same number of anchors (at least one) at each of the '
                              'config.model.strides')
        check_input_size(self.input_size, self.strides, 'config.model.input_size')
        if not self.class_names:
            raise ConfigError('the data set names no classes')

    def resized(self, input_size: int) -> DetectionSpec:
        """The same detector at another input side (multi-scale training); checked like any spec."""
        return dataclasses.replace(self, input_size=int(input_size))

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


def size_multiple(strides: Sequence[int]) -> int:
    """The multiple every input side must be: 32 (the backbones downsample by 32) and every stride."""
    return max(32, *(int(s) for s in strides))


def check_input_size(size: int, strides: Sequence[int], field: str) -> None:
    """ConfigError naming `field` unless `size` is a positive multiple of `size_multiple(strides)`."""
    multiple = size_multiple(strides)
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % multiple:
        nearest = max(multiple, round(float(size) / multiple) * multiple) if isinstance(size, int | float) else multiple
        raise ConfigError(f'{field}={size!r}: input_size must be a multiple of {multiple} (the network downsamples '
                          f'by {multiple}; config.model.strides={tuple(strides)}), e.g. {nearest}')


def check_num_classes(config_num_classes: int, class_names: Sequence[str], source: str) -> None:
    """ConfigError naming both values when config.model.num_classes disagrees with the data set's classes."""
    if int(config_num_classes) != len(class_names):
        raise ConfigError(
            f'config.model.num_classes={config_num_classes} but {source} has {len(class_names)} classes; '
            f'set --config.model.num_classes={len(class_names)}')


def parse_anchors(value: Any) -> tuple[tuple[tuple[float, float], ...], ...]:
    """config.model.anchors as ((w, h) pixels per anchor) per scale; ConfigError showing the expected form when
    it is not one (e.g. `--config.model.anchors=abc`: ml_collections passes a string through)."""
    try:
        return tuple(tuple((float(w), float(h)) for w, h in scale) for scale in value)
    except (TypeError, ValueError):
        raise ConfigError(f'config.model.anchors={value!r}: expected (w, h) pixel pairs per scale, e.g. '
                          "--config.model.anchors='(((10,13),(16,30),(33,23)),((30,61),(62,45),(59,119)))'") from None


def build_spec(model_config: ml_collections.ConfigDict, class_names: Sequence[str], source: str) -> DetectionSpec:
    """The spec for `model_config` and the data set's `class_names` (`source` names where they came from)."""
    check_num_classes(model_config.num_classes, class_names, source)
    return DetectionSpec(
        input_size=int(model_config.input_size),
        strides=tuple(int(s) for s in model_config.strides),
        anchors=parse_anchors(model_config.anchors),
        class_names=tuple(str(n) for n in class_names),
        scale_xy=tuple(float(k) for k in model_config.scale_xy),
    )
