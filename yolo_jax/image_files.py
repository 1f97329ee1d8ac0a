"""Image files named on a command line: a file, a directory, a glob, or a list of those (`--images`, `--check`).

Apart from detect.py (which re-exports `find_images`) so that export's `--check` reads images the same way without
importing the detect path (detect → video → export would be an import cycle).
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

from yolo_jax.errors import MissingFileError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


def find_images(images: str | Path | Sequence[str | Path]) -> list[Path]:
    """A file, a directory (its image files, sorted, not recursive), a glob, or a list of those → files.

    Raises FileNotFoundError when nothing matches.
    """
    if isinstance(images, (str, Path)):
        images = [images]
    out: list[Path] = []
    for item in images:
        p = Path(item).expanduser()
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            out.append(p)
        else:
            matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True))
            out += [m for m in matches if m.is_file()]
            if not matches:
                raise MissingFileError(f'--images: no file, directory or glob match for {item}')
    if not out:
        raise MissingFileError(f'--images: no image files in {", ".join(str(i) for i in images)}')
    return out
