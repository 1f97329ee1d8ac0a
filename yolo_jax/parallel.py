"""Data parallelism, mesh first: jit over a 1-D `'data'` device mesh (one device is a mesh of one), or `pmap`.

`Parallel` compiles the pure steps of `steps.py` for the chosen mode and turns each process's host batch (its
slice of the global batch) into device arrays. Both modes compute the same numbers for the same global batch:
under the mesh the compiler inserts the all-reduces, so gradients and BatchNorm statistics span the global batch;
under pmap gradients are averaged with `lax.pmean` and BatchNorm is synchronised through its `axis_name`. The mesh
spans every device of every process, so the same code runs on a laptop, one multi-GPU host or many hosts.

Multi-host: `initialize_distributed` connects the processes (`jax.distributed.initialize`) before anything touches
the devices: explicitly (coordinator address, process count and id, e.g. hosts started by hand) or by cluster
auto-detection (SLURM, Open MPI, ...).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from yolo_jax.errors import ConfigError
from yolo_jax.steps import PMAP_AXIS

MODES = ('mesh', 'pmap')
DATA_AXIS = 'data'


def initialize_distributed(
    coordinator_address: str = '', num_processes: int = 0, process_id: int = -1, *, auto: bool = False,
    heartbeat_timeout_seconds: int = 100, coordinator_timeout_seconds: int = 300,
) -> None:
    """Connects this process to the others (`jax.distributed.initialize`); a no-op for a single process.

    With `coordinator_address` ('host:port' of process 0) the count and this process's id must be given too
    (hosts started by hand); with `auto` the cluster (SLURM, Open MPI, k8s, ...) supplies them. A process that
    stops answering for `heartbeat_timeout_seconds` ends the others with an error instead of a hang; so does a
    coordinator that not every process has reached within `coordinator_timeout_seconds` (supervise.py turns both
    into one error line).
    """
    for flag, value in (('heartbeat_timeout_seconds', heartbeat_timeout_seconds),
                        ('coordinator_timeout_seconds', coordinator_timeout_seconds)):
        if value < 1:
            raise ConfigError(f'--{flag}={value}: expected a number of seconds >= 1')
    if coordinator_address:
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ConfigError(f'--coordinator_address needs --num_processes >= 1 and 0 <= --process_id < '
                              f'num_processes (got num_processes={num_processes}, process_id={process_id})')
        logging.info('Process %d of %d: connecting to the coordinator at %s (up to %d s)', process_id, num_processes,
                     coordinator_address, coordinator_timeout_seconds)
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   initialization_timeout=coordinator_timeout_seconds,
                                   heartbeat_timeout_seconds=heartbeat_timeout_seconds)
    elif auto:
        jax.distributed.initialize(initialization_timeout=coordinator_timeout_seconds,
                                   heartbeat_timeout_seconds=heartbeat_timeout_seconds)
    else:
        return
    logging.info('Process %d of %d; %d local / %d global devices', jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())


def check_batch_size(name: str, global_batch: int, num_devices: int, process_count: int) -> int:
    """Per-process batch size; a clear error when the global batch cannot be split evenly."""
    if global_batch % num_devices or global_batch % process_count:
        raise ConfigError(
            f'{name}={global_batch} must be divisible by the number of devices ({num_devices}) '
            f'and processes ({process_count}); e.g. --{name}={num_devices * max(1, global_batch // num_devices)}'
        )
    return global_batch // process_count


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f'config.train.parallel: unknown mode {mode!r}; expected one of {MODES}')
    return mode


@dataclasses.dataclass
class Parallel:
    """Compiled steps and batch placement for one parallel mode.

    train_step(state, batch) -> (state, metrics), eval_step(state, batch) -> metric sums and
    stats_step(state, batch) -> BatchNorm statistics are the pure functions of steps.py (keyword arguments
    bound); `axis_name` is passed to train/eval steps under pmap only.
    """

    mode: str
    train_step: Callable
    eval_step: Callable
    stats_step: Callable

    def __post_init__(self):
        check_mode(self.mode)
        self.num_devices = jax.device_count()
        if self.mode == 'pmap':
            pmap = functools.partial(jax.pmap, axis_name=PMAP_AXIS, in_axes=(None, 0))
            self._train = pmap(functools.partial(self.train_step, axis_name=PMAP_AXIS), out_axes=(None, None))
            self._eval = pmap(functools.partial(self.eval_step, axis_name=PMAP_AXIS), out_axes=None)
            # BatchNorm's axis_name already makes the statistics global: every device returns the same values.
            self._stats = pmap(self.stats_step, out_axes=None)
        else:
            self.mesh = jax.make_mesh((self.num_devices,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
            self.replicated = NamedSharding(self.mesh, P())
            self.batch_sharding = NamedSharding(self.mesh, P(DATA_AXIS))
            self._train = jax.jit(self.train_step, out_shardings=(self.replicated, self.replicated), donate_argnums=0)
            self._eval = jax.jit(self.eval_step, out_shardings=self.replicated)
            self._stats = jax.jit(self.stats_step, out_shardings=self.replicated)

    def place_state(self, state: Any) -> Any:
        """Puts the state where the compiled steps expect it: replicated over the mesh, or, under pmap, over the
        local devices as pmap returns it (out_axes=None), so that step 2 does not compile the step again for the
        initial state's single-device layout."""
        if self.mode == 'pmap':
            local = jax.sharding.Mesh(np.array(jax.local_devices()), (PMAP_AXIS,))
            return jax.device_put(state, NamedSharding(local, P()))
        if jax.process_count() == 1:
            return jax.device_put(state, self.replicated)

        # Across processes each one supplies the (identical) value for its own devices: CPU backends cannot
        # device_put across hosts.
        def replicate(x):
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, self.replicated, lambda index: x[index])

        return jax.tree.map(replicate, state)

    def place_batch(self, batch: dict[str, Any]) -> Any:
        """This process's host batch → device arrays laid out for the mode."""
        if self.mode == 'pmap':
            n = jax.local_device_count()
            return jax.tree.map(lambda x: np.reshape(x, (n, x.shape[0] // n) + x.shape[1:]), batch)
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x), batch)

    def train(self, state: Any, batch: dict[str, Any]) -> tuple[Any, dict]:
        return self._train(state, self.place_batch(batch))

    def eval(self, state: Any, batch: dict[str, Any]) -> dict:
        return self._eval(state, self.place_batch(batch))

    def stats(self, state: Any, batch: dict[str, Any]) -> Any:
        return self._stats(state, self.place_batch(batch))

    def compiled_train_steps(self) -> int | None:
        """How many train-step programs were compiled (1 after warm-up: no recompilation); None under pmap,
        whose wrapper does not say."""
        size = getattr(self._train, '_cache_size', None)
        return size() if size is not None else None
