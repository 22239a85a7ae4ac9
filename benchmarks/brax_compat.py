"""Compatibility shim so Brax 0.14.2's training agents run on jax >= 0.10.

Brax's `ppo`, `sac` and `apg` trainers (and `brax.training.pmap.bcast_local_devices`) replicate their train
state with `jax.device_put_replicated(x, devices)`, which jax 0.10 removed. `install()` puts back a function
with the same contract: every leaf gets a new leading axis of size `len(devices)`, one identical copy per
device, laid out across `devices` so `jax.pmap` consumes it without a transfer. Nothing else in Brax or jax is
touched, and the function is only added when jax lacks it.

    import brax_compat; brax_compat.install()   # before calling brax.training.agents.*.train
"""

from __future__ import annotations

import jax
import numpy as np


def device_put_replicated(x, devices):
    """`x` with a leading device axis, one copy on each of `devices` (the removed jax API's behaviour)."""
    devices = list(devices)
    if not devices:
        raise ValueError("device_put_replicated needs at least one device")
    mesh = jax.sharding.Mesh(np.array(devices), ("devices",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("devices"))

    def replicate(leaf):
        leaf = jax.numpy.asarray(leaf)
        shards = [jax.device_put(leaf[None], device) for device in devices]
        return jax.make_array_from_single_device_arrays((len(devices),) + leaf.shape, sharding, shards)

    return jax.tree.map(replicate, x)


def install() -> None:
    """Adds `jax.device_put_replicated` back if this jax has removed it."""
    if not hasattr(jax, "device_put_replicated"):
        jax.device_put_replicated = device_put_replicated
