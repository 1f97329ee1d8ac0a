"""Shared test fixtures: paths to ../shared/data (skip with a reason when absent)."""

import os
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
