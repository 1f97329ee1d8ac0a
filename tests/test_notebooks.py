"""The notebooks of experiments/: each .ipynb matches its percent-format .py, and the notebooks run top to bottom.

A notebook run executes the .py with runpy in a subprocess (headless: MPLBACKEND=Agg), on data generated into a
temporary TFDS dir from the bundled digits. The notebooks assert their own invariants, so a clean exit is a check.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / 'experiments'


def _sync_module():
    spec = importlib.util.spec_from_file_location('sync_notebooks', EXPERIMENTS / 'sync_notebooks.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sync = _sync_module()
NOTEBOOKS = sync.sources(EXPERIMENTS)


def test_notebooks_found():
    assert EXPERIMENTS / 'loss_debugging.py' in NOTEBOOKS


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_ipynb_in_sync_with_py(path):
    ipynb = path.with_suffix('.ipynb')
    assert ipynb.is_file(), f'{ipynb.name} is missing: run python experiments/sync_notebooks.py'
    assert sync.read_ipynb(ipynb) == sync.read_percent(path), (
        f'{ipynb.name} differs from {path.name}: edit the .py, then run python experiments/sync_notebooks.py'
    )


def test_percent_parser_round_trip(tmp_path):
    source = tmp_path / 'nb.py'
    source.write_text('# %% [markdown]\n# # Title\n#\n# text\n\n# %%\nx = 1\n\n\n# %%\nprint(x)\n')
    cells = sync.read_percent(source)
    assert cells == [('markdown', '# Title\n\ntext'), ('code', 'x = 1'), ('code', 'print(x)')]
    (tmp_path / 'nb.ipynb').write_text(sync.notebook_text(source))
    assert sync.read_ipynb(tmp_path / 'nb.ipynb') == cells
    assert sync.main(['--check', str(source)]) == 0
    source.write_text(source.read_text() + '\n# %%\ny = 2\n')
    assert sync.main(['--check', str(source)]) == 1


@pytest.mark.slow
def test_loss_debugging_notebook_runs(tmp_path):
    pytest.importorskip('matplotlib', reason='the notebooks need matplotlib (setup.cfg extras)')
    figures = tmp_path / 'figures'
    env = dict(
        os.environ,
        JAX_PLATFORMS='cpu',
        TF_CPP_MIN_LOG_LEVEL='2',
        MPLBACKEND='Agg',
        PYTHONUNBUFFERED='1',
        YOLO_WORKDIR='',
        YOLO_DATA_DIR=str(tmp_path / 'tfds'),
        YOLO_FIGURES=str(figures),
        YOLO_TRAIN_STEPS='4',  # the notebook's 20 take 12 s; 4 still lower the loss (it asserts so)
    )
    script = f'import runpy; runpy.run_path({str(EXPERIMENTS / "loss_debugging.py")!r}, run_name="__main__")'
    proc = subprocess.run([sys.executable, '-c', script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert 'per-cell maps agree with yolo_loss' in proc.stdout
    assert 're-encoding reproduces the pipeline targets exactly' in proc.stdout
    for name in ('targets', 'predictions', 'heatmaps', 'gradients', 'knobs'):
        png = figures / f'{name}.png'
        assert png.is_file() and png.stat().st_size > 10_000, name
