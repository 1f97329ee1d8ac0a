"""pmap and mesh data parallelism on 4 simulated CPU devices match a single-device run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from yolo_jax.parallel import check_batch_size


def test_pmap_and_mesh_match_single_device():
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', JAX_PLATFORMS='cpu')
    worker = Path(__file__).with_name('parallel_worker.py')
    cmd = [sys.executable, str(worker), '0.1']  # Adam epsilon: see parallel_worker.py
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')][-1]
    result = json.loads(line[len('RESULT '):])
    for mode in ('pmap', 'mesh'):
        r = result[mode]
        assert r['rel_l2_diff'] < 1e-5, (mode, r)
        assert r['frac_elements_off'] < 1e-3, (mode, r)
        assert r['moved'] > 1e-6  # the runs really trained
        assert r['eval_total'] == pytest.approx(r['base_eval_total'], rel=1e-5), (mode, r)


def test_batch_must_divide_devices():
    assert check_batch_size('config.train.batch_size', 8, 4, 2) == 4
    with pytest.raises(ValueError, match=r'config.train.batch_size=6 must be divisible.*devices \(4\)'):
        check_batch_size('config.train.batch_size', 6, 4, 1)
