"""The MNIST detection generator of the TF2 reference (PL mnist/make_data.py), seeded and in pure NumPy.

Per image (see shared notes, reference.md):
    - a square canvas of `image_size` pixels filled with 255 (reference: 416);
    - three size groups, each drawing a count and, per digit, a side ratio uniformly from its list:
      small U{0..3} x {0.5, 0.8}, medium U{0..6} x {1, 1.5, 2}, big U{0..3} x {3, 4}; an image whose three counts
      are all zero is redrawn;
    - per digit: a random digit of the split's pool, bilinearly resized to side int(28 * ratio); top-left corner
      x1 ~ U[0, size - w), y1 ~ U[0, size - h); accepted only if intersection / (A1 + A2) < 0.02 against every
      earlier box of the image (that measure is not IoU), otherwise a new corner is drawn;
    - the whole patch (margin included) is pasted, overwriting earlier margins; box = the patch, label = the digit.

The acceptance measure lets a later big patch's white margin cover most of an earlier small digit (a 14 px digit
fits entirely inside a 112 px patch at measure 0.0154 < 0.02): with the reference's overwrite about 0.6% of the boxes
label a digit that is more than 90% hidden. `paste='overwrite'` (default) reproduces that; `paste='darken'` keeps the
darker pixel where patches overlap, so every digit stays visible (the boxes are unchanged).

Deliberate differences from upstream: it is seeded (every image has its own `np.random.Generator` derived from
(seed, split, index), so image i does not depend on how many images are generated), and the placement retries are
bounded (upstream loops forever when a digit cannot fit).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
from absl import logging

from yolo_jax.data.digits import DIGIT_SIDE, Digits, resize_uint8

# (maximum count, side ratios) per size group, in the reference's drawing order: small, medium, big.
SIZE_GROUPS: tuple[tuple[int, tuple[float, ...]], ...] = (
    (3, (0.5, 0.8)),
    (6, (1.0, 1.5, 2.0)),
    (3, (3.0, 4.0)),
)
MAX_OVERLAP = 0.02  # intersection / (A1 + A2) must stay below this
MAX_PLACEMENT_TRIES = 10_000
_SPLIT_CODES = {'train': 0, 'test': 1}
PASTE_MODES = ('overwrite', 'darken')


class PlacementError(RuntimeError):
    """A digit could not be placed without overlapping earlier ones within the retry bound."""


@dataclasses.dataclass(frozen=True)
class GeneratedImage:
    """One generated detection example.

    Attributes:
        image: (S, S, 3) uint8 RGB (grey: the three channels are equal), background 255.
        boxes: (N, 4) int32 x1, y1, x2, y2 in pixels; x2 = x1 + side (exclusive corner), i.e. the pasted patch is
            image[y1:y2, x1:x2].
        labels: (N,) int32 digit labels 0..9.
        digit_indices: (N,) int64 indices of the source digits in the split's `Digits` pool.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    digit_indices: np.ndarray


def patch_sides() -> tuple[int, ...]:
    """All possible patch sides in pixels: int(28 * ratio) -> (14, 22, 28, 42, 56, 84, 112)."""
    return tuple(sorted({int(DIGIT_SIDE * r) for _, ratios in SIZE_GROUPS for r in ratios}))


def overlap_measure(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The reference's acceptance measure intersection / (A1 + A2) of `box` (4,) against `boxes` (M, 4), xyxy.

    Returns (M,) float64. Areas are (x2 - x1) * (y2 - y1) pixels (no +1).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    box = np.asarray(box, np.float64)
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return iw * ih / (area + areas)


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator for image `index` of `split`: independent streams per (seed, split, index)."""
    return np.random.default_rng([int(seed), _SPLIT_CODES[split], int(index)])


def check_image_size(image_size: int) -> None:
    """Raises ValueError if the biggest patch (112 px) cannot be placed: x1 ~ U[0, size - 112) needs size > 112."""
    largest = max(patch_sides())
    if image_size <= largest:
        raise ValueError(f'config.data.image_size={image_size}: must exceed the largest digit patch ({largest} px)')


def generate_image(
    rng: np.random.Generator,
    digits: Digits,
    image_size: int = 416,
    *,
    max_tries: int = MAX_PLACEMENT_TRIES,
    paste: str = 'overwrite',
) -> GeneratedImage:
    """Draws one detection image from `digits` (images (P, 28, 28) uint8 black-on-white, labels (P,)).

    `paste`: 'overwrite' (reference: the whole patch replaces what is under it) or 'darken' (per-pixel minimum).

    Raises:
        PlacementError: a digit found no free spot in `max_tries` draws (canvas too small for the digits).
    """
    check_image_size(image_size)
    if paste not in PASTE_MODES:
        raise ValueError(f'paste must be one of {PASTE_MODES}, got {paste!r}')
    if len(digits) == 0:
        raise ValueError('generate_image: the digit pool is empty')
    while True:
        counts = [int(rng.integers(0, hi + 1)) for hi, _ in SIZE_GROUPS]
        if sum(counts):
            break
    canvas = np.full((image_size, image_size), 255, np.uint8)
    boxes: list[list[int]] = []
    labels: list[int] = []
    indices: list[int] = []
    for count, (_, ratios) in zip(counts, SIZE_GROUPS, strict=True):
        for _ in range(count):
            ratio = ratios[int(rng.integers(len(ratios)))]
            index = int(rng.integers(len(digits)))
            side = int(DIGIT_SIDE * ratio)
            patch = resize_uint8(digits.images[index], side)
            for _ in range(max_tries):
                x1 = int(rng.integers(0, image_size - side))
                y1 = int(rng.integers(0, image_size - side))
                box = [x1, y1, x1 + side, y1 + side]
                if not boxes or overlap_measure(np.array(box), np.array(boxes)).max() < MAX_OVERLAP:
                    break
            else:
                raise PlacementError(
                    f'could not place a {side}px digit on a {image_size}px canvas holding {len(boxes)} digits in '
                    f'{max_tries} tries; use a larger config.data.image_size'
                )
            region = canvas[y1 : y1 + side, x1 : x1 + side]
            region[...] = patch if paste == 'overwrite' else np.minimum(region, patch)
            boxes.append(box)
            labels.append(int(digits.labels[index]))
            indices.append(index)
    return GeneratedImage(
        image=np.repeat(canvas[:, :, None], 3, axis=2),
        boxes=np.asarray(boxes, np.int32).reshape(-1, 4),
        labels=np.asarray(labels, np.int32),
        digit_indices=np.asarray(indices, np.int64),
    )


def generate_split(
    digits: Digits,
    num_images: int,
    *,
    split: str,
    seed: int = 0,
    image_size: int = 416,
    paste: str = 'overwrite',
    log_every: int = 200,
) -> Iterator[tuple[int, GeneratedImage]]:
    """Yields (index, image) for `num_images` images of `split` drawn only from `digits` (that split's pool).

    Image i is a function of (seed, split, i, digits) only.
    """
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    check_image_size(image_size)
    for i in range(num_images):
        yield i, generate_image(image_rng(seed, split, i), digits, image_size, paste=paste)
        if log_every and (i + 1) % log_every == 0:
            logging.info('Generated %d/%d %s images', i + 1, num_images, split)
