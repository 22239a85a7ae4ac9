"""The benchmarks' shim for Brax's trainers restores `jax.device_put_replicated`'s contract."""

import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import brax_compat  # noqa: E402


def test_replicates_every_leaf_once_per_device_and_pmap_consumes_it():
    tree = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.asarray(3, jnp.int32)}
    devices = jax.local_devices()
    out = brax_compat.device_put_replicated(tree, devices)
    assert out["w"].shape == (len(devices), 2, 3) and out["step"].shape == (len(devices),)
    for shard in out["w"].addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data)[0], np.asarray(tree["w"]))
    assert {shard.device for shard in out["w"].addressable_shards} == set(devices)
    doubled = jax.pmap(lambda t: t["w"] * 2 + t["step"])(out)
    np.testing.assert_array_equal(np.asarray(doubled), np.broadcast_to(np.asarray(tree["w"]) * 2 + 3,
                                                                        (len(devices), 2, 3)))


def test_install_adds_the_function_only_where_missing():
    brax_compat.install()
    assert callable(jax.device_put_replicated)
    before = jax.device_put_replicated
    brax_compat.install()
    assert jax.device_put_replicated is before


def test_works_across_four_cpu_devices():
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / 'benchmarks')!r})
        import jax, numpy as np, brax_compat
        assert jax.device_count() == 4
        out = brax_compat.device_put_replicated(np.ones((3,), np.float32), jax.devices())
        print(float(jax.pmap(lambda x: jax.lax.psum(x.sum(), 'i'), 'i')(out)[0]))
    """)
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "12.0"
