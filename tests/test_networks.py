"""The critic's trunk against a forward pass written out in numpy, with and without `critic_norm_all`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purempo.config import Config
from purempo.train import make_networks

OBS, ACT, BATCH = 5, 2, 7


def _layer_norm(x, scale, bias, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def _elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))


def _naive_q(trunk, head, x, norm_all):
    """Dense → LayerNorm → tanh, then per later layer Dense (→ LayerNorm when norm_all) → ELU, then Dense(1)."""
    h = np.tanh(_layer_norm(x @ trunk["Dense_0"]["kernel"] + trunk["Dense_0"]["bias"],
                            trunk["LayerNorm_0"]["scale"], trunk["LayerNorm_0"]["bias"]))
    for i in range(1, len([k for k in trunk if k.startswith("Dense_")])):
        h = h @ trunk[f"Dense_{i}"]["kernel"] + trunk[f"Dense_{i}"]["bias"]
        if norm_all:
            h = _layer_norm(h, trunk[f"LayerNorm_{i}"]["scale"], trunk[f"LayerNorm_{i}"]["bias"])
        h = _elu(h)
    return (h @ head["kernel"] + head["bias"])[..., 0]


@pytest.mark.parametrize("norm_all", [False, True])
@pytest.mark.parametrize("num_critics", [1, 3])
def test_critic_matches_a_numpy_forward_pass_with_layer_norm_where_configured(norm_all, num_critics):
    """make_networks wires `critic_norm_all` into the critic: its Q equals the numpy pass above (every
    LayerNorm's scale and bias randomised so that each one counts), it has a LayerNorm per hidden layer with the
    option and only the first without it, for a single critic and for each member of an ensemble."""
    config = Config(env="inverted_pendulum", critic_hidden=(8, 6, 4), critic_norm_all=norm_all,
                    num_critics=num_critics)
    critic = make_networks(config, ACT).critic
    params = critic.init(jax.random.key(0), jnp.zeros((1, OBS)), jnp.zeros((1, ACT)))
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree_util.tree_unflatten(  # randomise everything, LayerNorm scales and biases included
        treedef, [leaf + 0.3 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)])

    rng = np.random.default_rng(2)
    obs = rng.normal(size=(BATCH, OBS)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(BATCH, ACT)).astype(np.float32)
    q = np.asarray(jax.jit(critic.apply)(params, jnp.asarray(obs), jnp.asarray(act)), np.float64)
    x = np.concatenate([obs, act], -1).astype(np.float64)
    tree = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), params)["params"]
    if num_critics == 1:
        members = [(tree["LayerNormMLP_0"], tree["Dense_0"])]
    else:
        m = tree["members"]
        members = [(jax.tree_util.tree_map(lambda v: v[i], m["LayerNormMLP_0"]),
                    jax.tree_util.tree_map(lambda v: v[i], m["Dense_0"])) for i in range(num_critics)]
    expected = np.stack([_naive_q(trunk, head, x, norm_all) for trunk, head in members])
    assert q.shape == ((BATCH,) if num_critics == 1 else (num_critics, BATCH))
    np.testing.assert_allclose(q.reshape(expected.shape), expected, rtol=1e-4, atol=1e-4)
    norms = sorted(k for k in members[0][0] if k.startswith("LayerNorm_"))
    assert norms == (["LayerNorm_0", "LayerNorm_1", "LayerNorm_2"] if norm_all else ["LayerNorm_0"])


@pytest.mark.parametrize("num_critics", [1, 2])
def test_critic_of_n_actions_per_state_equals_the_naive_concatenation(num_critics):
    """obs `[B, O]` against actions `[N, B, A]`: the observation's part of the first layer is computed once and
    broadcast; Q equals the numpy pass on the explicitly broadcast and concatenated input, per action."""
    config = Config(env="inverted_pendulum", critic_hidden=(8, 6), num_critics=num_critics)
    critic = make_networks(config, ACT).critic
    params = critic.init(jax.random.key(3), jnp.zeros((OBS,)), jnp.zeros((ACT,)))
    rng = np.random.default_rng(4)
    obs = rng.normal(size=(BATCH, OBS)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(4, BATCH, ACT)).astype(np.float32)
    q = np.asarray(jax.jit(critic.apply)(params, jnp.asarray(obs), jnp.asarray(act)), np.float64)
    x = np.concatenate([np.broadcast_to(obs, (4, BATCH, OBS)), act], -1).astype(np.float64)
    tree = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), params)["params"]
    if num_critics == 1:
        expected = _naive_q(tree["LayerNormMLP_0"], tree["Dense_0"], x, False)
    else:
        m = tree["members"]
        expected = np.stack([_naive_q(jax.tree_util.tree_map(lambda v: v[i], m["LayerNormMLP_0"]),
                                      jax.tree_util.tree_map(lambda v: v[i], m["Dense_0"]), x, False)
                             for i in range(num_critics)])
    assert q.shape == expected.shape == ((4, BATCH) if num_critics == 1 else (num_critics, 4, BATCH))
    np.testing.assert_allclose(q, expected, rtol=1e-4, atol=1e-4)


def test_critic_initialisation_is_flax_dense_on_the_concatenation():
    """The first layer's parameters are initialised as `nn.Dense` on the concatenated input (same names, shapes
    and draws), so a checkpoint of a critic built with `nn.Dense` restores into it."""
    import flax.linen as nn

    class Concatenated(nn.Module):
        @nn.compact
        def __call__(self, obs, action):
            x = jnp.concatenate([obs, action], -1)
            x = nn.Dense(8, kernel_init=nn.initializers.lecun_uniform(), name="Dense_0")(x)
            x = nn.Dense(6, kernel_init=nn.initializers.lecun_uniform(), name="Dense_1")(jnp.tanh(x))
            return x

    config = Config(env="inverted_pendulum", critic_hidden=(8, 6))
    ours = make_networks(config, ACT).critic.init(jax.random.key(5), jnp.zeros((OBS,)), jnp.zeros((ACT,)))

    class Wrapper(nn.Module):  # flax draws a parameter from its module path: the same path, the same draw
        @nn.compact
        def __call__(self, obs, action):
            return Concatenated(name="LayerNormMLP_0")(obs, action)

    theirs = Wrapper().init(jax.random.key(5), jnp.zeros((OBS,)), jnp.zeros((ACT,)))
    for name in ("Dense_0", "Dense_1"):
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(ours["params"]["LayerNormMLP_0"][name][leaf],
                                          theirs["params"]["LayerNormMLP_0"][name][leaf])
