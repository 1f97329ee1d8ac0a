"""Where eval, detect and export read the network from (a workdir's checkpoints or a Darknet --weights file),
checked by paths alone: export runs `check` after its flag checks and before TensorFlow loads, so a missing file or
an untrained workdir is one error line in the first second, and the loaders (inference.load_detector,
checkpointing.load_model) raise the same errors. (`main --mode=eval|detect` check their config and inputs first,
after TensorFlow loads, so they meet these errors in the loader.) Layout: `WORKDIR/checkpoints/<step>/{state,
meta}` (checkpointing.py).
"""

from __future__ import annotations

from pathlib import Path

from yolo_jax.errors import MissingFileError


def checkpoint_location(path: str | Path) -> tuple[Path, int | None]:
    """(checkpoints directory, step or None) for a workdir, its checkpoints/ or one checkpoints/<step>."""
    path = Path(path).expanduser().absolute()
    if (path / 'checkpoints').is_dir():
        return path / 'checkpoints', None
    if path.name.isdigit() and ((path / 'state').is_dir() or (path / 'meta').is_dir()):
        return path.parent, int(path.name)
    return path, None


def no_checkpoint_directory(what: str, directory: Path) -> MissingFileError:
    return MissingFileError(f'{what}: no checkpoint directory at {directory} (train first, or pass --weights)')


def no_checkpoint(what: str, directory: Path) -> MissingFileError:
    return MissingFileError(f'{what}: no checkpoint in {directory} (train first, or pass --weights)')


def check_weights_file(weights: str | Path) -> Path:
    """The --weights path (user home expanded); MissingFileError when it is not a file."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise MissingFileError(f'--weights: no such file {path}')
    return path


def check_workdir(workdir: str | Path | None) -> None:
    """A workdir to load a checkpoint from: it exists (MissingFileError otherwise)."""
    if workdir is None or not Path(workdir).is_dir():
        raise MissingFileError(f'workdir {workdir} does not exist: train first (--mode=train) or pass '
                               '--weights=FILE')


def check(workdir: str | Path | None, weights: str | Path | None) -> None:
    """The network's source as the loaders will find it: the --weights file when given, else a workdir holding a
    checkpoint step folder (whether that checkpoint is complete is checked when it loads)."""
    if weights:
        check_weights_file(weights)
        return
    check_workdir(workdir)
    directory, step = checkpoint_location(workdir)
    if step is None and not any(p.name.isdigit() and p.is_dir() for p in directory.iterdir()):
        raise no_checkpoint(f'--workdir={workdir}', directory)
