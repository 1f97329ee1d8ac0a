"""conftest.build_once: a folder built once per session for every xdist worker, rebuilt after a failed build."""

import multiprocessing
import uuid
from pathlib import Path

import pytest


def test_builds_once_and_reuses(build_once):
    name, calls = f'once-{uuid.uuid4().hex}', []

    def build(folder: Path) -> None:
        calls.append(folder)
        (folder / 'made').write_text('1')

    first = build_once(name, build)
    assert build_once(name, build) == first and len(calls) == 1 and (first / 'made').read_text() == '1'


def test_a_failed_build_is_redone_from_an_empty_folder(build_once):
    name = f'failed-{uuid.uuid4().hex}'

    def broken(folder: Path) -> None:
        (folder / 'half').write_text('x')
        raise RuntimeError('build failed')

    with pytest.raises(RuntimeError, match='build failed'):
        build_once(name, broken)
    seen = []
    folder = build_once(name, lambda f: seen.append(sorted(p.name for p in f.iterdir())))
    assert seen == [[]] and folder.is_dir()  # rebuilt, from an empty folder


def _build_in_child(args: tuple[str, str]) -> None:
    """What a second xdist worker does: the same lock file, from another process."""
    import fcntl  # noqa: PLC0415

    root, name = map(Path, args)
    (root / f'{name}.started').touch()
    with open(root / f'{name}.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        (root / f'{name}.child').write_text('held the lock after the parent')


def test_the_lock_excludes_another_process(build_once, tmp_path_factory):
    """A second process asking for the lock while the build runs gets it only after the build is done."""
    name = f'locked-{uuid.uuid4().hex}'
    ctx = multiprocessing.get_context('spawn')
    child = []

    def build(folder: Path) -> None:
        proc = ctx.Process(target=_build_in_child, args=((str(folder.parent), name),))
        proc.start()
        child.append(proc)
        started = folder.parent / f'{name}.started'
        for _ in range(600):  # until the child runs (a spawned interpreter takes a moment)
            if started.exists():
                break
            proc.join(timeout=0.1)
        proc.join(timeout=1.0)  # then it blocks on the lock this build holds
        assert proc.is_alive() and not (folder.parent / f'{name}.child').exists()

    folder = build_once(name, build)
    child[0].join(timeout=60)
    assert child[0].exitcode == 0 and (folder.parent / f'{name}.child').is_file()
