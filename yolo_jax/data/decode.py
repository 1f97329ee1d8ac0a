"""One image decoder for training, evaluation and detection, so every path sees the same pixels.

JPEG decoders differ (PIL's libjpeg and TensorFlow's round the IDCT and chroma upsampling differently: up to 8
levels on two thirds of the values of a photo), so the format decides the decoder once, everywhere: the formats
TensorFlow reads natively (`TF_IMAGE_FORMATS`) are decoded by `tf.io.decode_image` (the op the tf.data pipeline
runs), the others (TIFF, WebP, PPM, ...) by PIL.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from yolo_jax.errors import DataError

TF_IMAGE_FORMATS = frozenset({'JPEG', 'PNG', 'BMP', 'GIF'})


def header(path: str | os.PathLike) -> tuple[int, int, str]:
    """(width, height, PIL format name) from the image header, without decoding the pixels."""
    from PIL import Image  # noqa: PLC0415

    with Image.open(path) as im:
        return int(im.width), int(im.height), str(im.format)


def tf_error_text(e: Exception) -> str:
    """A TF op error's message without its '{{function_node ...}}' prefix and ' [Op:...]' suffix."""
    text = getattr(e, 'message', None) or str(e)
    text = re.sub(r'\{\{function_node [^}]*\}\}\s*', '', text)
    return re.sub(r'\s*\[Op:[^\]]*\].*$', '', text, flags=re.S).strip()


def pil_decode(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB by PIL, decoded in full; DataError naming the file."""
    from PIL import Image  # noqa: PLC0415

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert('RGB'), np.uint8)
    except Exception as e:  # noqa: BLE001 - any PIL failure means unreadable
        raise DataError(f'cannot read image {os.fsdecode(path)}: {e}') from None


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB of the image file at `path`, by the decoder its format gets everywhere (module
    docstring); DataError naming the file when it is not a readable image."""
    try:
        fmt = header(path)[2]
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, ValueError, SyntaxError, DecompressionBombError
        raise DataError(f'cannot read image {os.fsdecode(path)}: {e}') from None
    if fmt not in TF_IMAGE_FORMATS:
        return pil_decode(path)
    import tensorflow as tf  # noqa: PLC0415  (eager, on the host: never inside jit)

    try:
        image = tf.io.decode_image(tf.io.read_file(str(Path(path))), channels=3, expand_animations=False)
    except (tf.errors.OpError, ValueError) as e:
        raise DataError(f'cannot read image {os.fsdecode(path)}: {tf_error_text(e)}') from None
    return image.numpy()
