"""Data parallelism over devices with `jax.shard_map`: envs, replay and sampled batches split along the env
axis, parameters replicated.

Each of D devices steps `num_envs / D` envs, keeps the replay of those envs and samples `batch_size / D`
sequences from it; the learner averages gradients over devices (`jax.lax.pmean` in `train.learner_step`)
before any optimiser step, so the replicated parameters stay bit-identical on every device. Observation and
reward statistics are updated from the envs of all devices (`gather`), exactly as one device with every env
would. Randomness that must differ between devices (env resets, exploration, sampling) comes from
`per_device(key)`; randomness that must agree (network initialisation) uses the replicated key as it is.

The maths modules never see a device: `train.make_trainer(config, num_devices)` builds the per-device
program with the collectives of this module, and `train.distribute` wraps it in `shard_map` over `make_mesh`.
With several processes (`jax.distributed.initialize`, one per host) the mesh spans every process's devices
and the same program runs everywhere (README: multi-host).
"""

from __future__ import annotations

import itertools
from typing import Any, Dict, Optional

import chex
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "devices"
"""Name of the mesh axis that the env axis is split over."""


_barriers = itertools.count()


def wait_for_every_process(name: str, timeout_s: float = 3600.0) -> None:
    """Blocks until every process of a multi-process run has called this (the coordination service's barrier;
    nothing with one process). gloo's collectives give all processes 30 s to meet at their first call, and one
    host may finish compiling minutes after another."""
    if jax.process_count() > 1:
        from jax._src import distributed  # the client `jax.distributed.initialize` made; orbax reads it too

        key = f"purempo/{name}/{next(_barriers)}"
        distributed.global_state.client.wait_at_barrier(key, timeout_in_ms=int(timeout_s * 1000))


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
    """A one-axis mesh over the first `num_devices` of `jax.devices()` (all of them, over every process,
    when None)."""
    devices = jax.devices()
    num = len(devices) if num_devices is None else num_devices
    if not 1 <= num <= len(devices):
        raise ValueError(f"invalid num_devices={num}: must be in 1..{len(devices)} (the devices JAX sees: "
                         f"{len(devices)} {devices[0].platform})")
    return Mesh(np.array(devices[:num]), (AXIS,))


def check_divisible(config, num_devices: int) -> None:
    """One-line ValueError unless every size that is split over devices splits evenly."""
    if num_devices < 1:
        raise ValueError(f"invalid num_devices={num_devices}: must be >= 1")
    for field in ("num_envs", "batch_size", "eval_episodes", "reset_pool_size"):
        value = getattr(config, field)
        if value % num_devices:
            raise ValueError(f"invalid {field}={value}: must be a multiple of the number of devices "
                             f"({num_devices}), each of which takes an equal share")


def per_device(key: chex.PRNGKey, axis_name: Optional[str]) -> chex.PRNGKey:
    """A key of this device's own inside `shard_map` (`key` itself without an axis)."""
    return key if axis_name is None else jax.random.fold_in(key, jax.lax.axis_index(axis_name))


def gather(x: chex.Array, axis_name: Optional[str], axis: int = 0) -> chex.Array:
    """The envs of every device along `axis`, in global env order (`x` itself without an axis)."""
    return x if axis_name is None else jax.lax.all_gather(x, axis_name, axis=axis, tiled=True)


def total(x: chex.Array, axis_name: Optional[str]) -> chex.Array:
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def reduce_metrics(metrics: Dict[str, chex.Array], axis_name: str) -> Dict[str, chex.Array]:
    """Scalar learner metrics of each device's batch → the same value on every device: the minimum of a
    `*_min`, the maximum of a `*_max`, the mean of the rest (each device's batch is the same size)."""
    def reduce(name, value):
        if name.endswith("_min"):
            return jax.lax.pmin(value, axis_name)
        if name.endswith("_max"):
            return jax.lax.pmax(value, axis_name)
        return jax.lax.pmean(value, axis_name)

    return {name: reduce(name, value) for name, value in metrics.items()}


SHARED = -1
"""`env_axes` entry of a leaf that every device holds whole (None is kept for an empty subtree)."""


def state_specs(env_axes: Any) -> Any:
    """PartitionSpecs for a per-device state from its `env_axes` (the state's structure; per leaf the index of
    its env axis, split over devices, or `SHARED`, replicated)."""
    return jax.tree.map(lambda axis: P() if axis == SHARED else P(*([None] * axis + [AXIS])), env_axes)


def named(mesh: Mesh, specs: Any, batched: bool = False) -> Any:
    """NamedShardings of `specs` on `mesh`; `batched` prepends the (replicated) seed axis."""
    def one(spec):
        return NamedSharding(mesh, P(None, *spec) if batched else spec)

    return jax.tree.map(one, specs, is_leaf=lambda x: isinstance(x, P))


def device_copies(x: jax.Array) -> list:
    """The copies of a replicated array held by each (addressable) device, as NumPy arrays: equal on every
    device if the parameters really are replicated."""
    return [np.asarray(shard.data) for shard in x.addressable_shards]
