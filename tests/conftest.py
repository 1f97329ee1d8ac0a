"""Shared test fixtures: paths to ../shared/data (skip with a reason when absent)."""

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

# Tests never need more than the host's CPU; keep TF and JAX quiet and off any GPU.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the checkout, or skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f'shared data not found at {SHARED_DATA} (development data; see README)')
    return SHARED_DATA


def _session_root(tmp_path_factory) -> Path:
    """The pytest session's temporary folder, the same for all xdist workers (popen-gwN/ sit below it)."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get('PYTEST_XDIST_WORKER') else root


@pytest.fixture(scope='session')
def build_once(tmp_path_factory) -> Callable[[str, Callable[[Path], None]], Path]:
    """`build_once(name, build)`: the folder SESSION/name, filled by `build(folder)` once for the whole session.

    With xdist every worker has its own module and session fixtures, so a fixture that trains a model trains it
    once per worker that runs one of its tests; this builds it once for all of them. The first caller builds
    under an exclusive lock on SESSION/name.lock; the others wait on the lock and reuse the folder. A build that
    raised leaves no `done` marker, so the next caller builds again from an empty folder (and fails the same way,
    in its own test).
    """
    root = _session_root(tmp_path_factory)

    def get(name: str, build: Callable[[Path], None]) -> Path:
        folder, done = root / name, root / f'{name}.done'
        with open(root / f'{name}.lock', 'w') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not done.exists():
                shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
                folder.mkdir()
                build(folder)
                done.touch()
        return folder

    return get


@pytest.fixture(scope='session', autouse=True)
def shared_compilation_cache(tmp_path_factory) -> Path:
    """One persistent XLA compilation cache for the child processes of the whole session (all xdist workers).

    The end-to-end tests start `python -m yolo_jax.main` dozens of times with the same small programs: compiling
    them is most of a smoke run's CPU (36 s of CPU cold, 13 s warm). The cache only skips compilations; the
    executables and the numbers are the same. JAX reads these variables when it is imported, so importing it here
    first keeps the tests' own process uncached (one of them counts compilations).
    """
    import jax  # noqa: F401, PLC0415  (before the variables below are set)

    cache = _session_root(tmp_path_factory) / 'jax_compilation_cache'
    os.environ['JAX_COMPILATION_CACHE_DIR'] = str(cache)
    os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
    os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '-1'
    return cache


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `slow` first, each group in its usual order: xdist hands them out early (with --dist
    worksteal, pyproject.toml), so a run does not end on one worker finishing a two-minute test while the
    other idles."""
    items.sort(key=lambda item: item.get_closest_marker('slow') is None)
