"""Data parallelism: one device (jit), `pmap`, or jit over a 1-D `'data'` device mesh.

`Parallel` compiles the train and eval steps for the chosen mode and moves host batches (this process's
slice of the global batch) onto the devices. All three modes compute the same numbers for the same global
batch: under pmap gradients are averaged with `lax.pmean` and BatchNorm statistics are synchronised through
its `axis_name`; under the mesh the compiler inserts the all-reduces, so BatchNorm sees the global batch.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

MODES = ('none', 'pmap', 'mesh')
PMAP_AXIS = 'batch'


def check_batch_size(name: str, global_batch: int, num_devices: int, process_count: int) -> int:
    """Per-process batch size; a clear error when the global batch cannot be split evenly."""
    if global_batch % num_devices or global_batch % process_count:
        raise ValueError(
            f'{name}={global_batch} must be divisible by the number of devices ({num_devices}) '
            f'and processes ({process_count}); e.g. --{name}={num_devices * max(1, global_batch // num_devices)}'
        )
    return global_batch // process_count


@dataclasses.dataclass
class Parallel:
    """Compiled steps and batch placement for one parallel mode.

    train_step(state, batch) -> (state, metrics) and eval_step(state, batch) -> metrics are the pure
    functions of train.py; `axis_name` is passed to them only under pmap.
    """

    mode: str
    train_step: Callable
    eval_step: Callable
    stats_step: Callable | None = None  # fn(state, batch) -> BatchNorm statistics (recalibration)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f'config.train.parallel: unknown mode {self.mode!r}; expected one of {MODES}')
        self.num_devices = 1 if self.mode == 'none' else jax.device_count()
        if self.mode == 'pmap':
            self._train = jax.pmap(
                functools.partial(self.train_step, axis_name=PMAP_AXIS),
                axis_name=PMAP_AXIS,
                in_axes=(None, 0),
                out_axes=(None, None),
            )
            self._eval = jax.pmap(
                functools.partial(self.eval_step, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS, in_axes=(None, 0),
                out_axes=None,
            )
            # BatchNorm's axis_name already makes the statistics global: every device returns the same values.
            self._stats = self.stats_step and jax.pmap(self.stats_step, axis_name=PMAP_AXIS, in_axes=(None, 0),
                                                       out_axes=None)
        elif self.mode == 'mesh':
            self.mesh = jax.make_mesh((jax.device_count(),), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
            self.replicated = NamedSharding(self.mesh, P())
            self.batch_sharding = NamedSharding(self.mesh, P('data'))
            self._train = jax.jit(self.train_step, out_shardings=(self.replicated, self.replicated), donate_argnums=0)
            self._eval = jax.jit(self.eval_step, out_shardings=self.replicated)
            self._stats = self.stats_step and jax.jit(self.stats_step, out_shardings=self.replicated)
        else:
            self._train = jax.jit(self.train_step, donate_argnums=0)
            self._eval = jax.jit(self.eval_step)
            self._stats = self.stats_step and jax.jit(self.stats_step)

    def place_state(self, state: Any) -> Any:
        """Puts the state where the compiled steps expect it (replicated over the mesh)."""
        if self.mode == 'mesh':
            return jax.device_put(state, self.replicated)
        return state

    def place_batch(self, batch: dict[str, Any]) -> Any:
        """This process's host batch → device arrays laid out for the mode."""
        if self.mode == 'pmap':
            n = jax.local_device_count()
            return jax.tree.map(lambda x: np.reshape(x, (n, x.shape[0] // n) + x.shape[1:]), batch)
        if self.mode == 'mesh':
            return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x), batch)
        return batch

    def train(self, state: Any, batch: dict[str, Any]) -> tuple[Any, dict]:
        return self._train(state, self.place_batch(batch))

    def eval(self, state: Any, batch: dict[str, Any]) -> dict:
        return self._eval(state, self.place_batch(batch))

    def stats(self, state: Any, batch: dict[str, Any]) -> Any:
        return self._stats(state, self.place_batch(batch))

    def cache_size(self) -> int:
        """Number of compiled train-step variants (1 after warm-up: no recompilation across steps)."""
        return self._train._cache_size()
