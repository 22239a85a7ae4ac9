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


class _ConcatenatingCritic:
    """The critic as it was built before its first layer was split: `nn.Dense` layers named by flax on the
    explicitly broadcast and concatenated input (a copy kept as the reference for parameter compatibility)."""

    @staticmethod
    def make(hidden, num_members, norm_all):
        import flax.linen as nn

        class MLP(nn.Module):
            @nn.compact
            def __call__(self, x):
                x = jnp.tanh(nn.LayerNorm()(nn.Dense(hidden[0], kernel_init=nn.initializers.lecun_uniform())(x)))
                for size in hidden[1:]:
                    x = nn.Dense(size, kernel_init=nn.initializers.lecun_uniform())(x)
                    x = nn.elu(nn.LayerNorm()(x) if norm_all else x)
                return x

        class Head(nn.Module):
            @nn.compact
            def __call__(self, x):
                return nn.Dense(1)(MLP(name="LayerNormMLP_0")(x))[..., 0]

        class Critic(nn.Module):
            @nn.compact
            def __call__(self, obs, action):
                x = jnp.concatenate([jnp.broadcast_to(obs, action.shape[:-1] + obs.shape[-1:]), action], -1)
                if num_members == 1:
                    return nn.Dense(1)(MLP(name="LayerNormMLP_0")(x))[..., 0]
                members = nn.vmap(Head, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None,
                                  out_axes=0, axis_size=num_members)
                return members(name="members")(x)

        return Critic()


@pytest.mark.parametrize("num_critics", [1, 2])
@pytest.mark.parametrize("norm_all", [False, True])
def test_critic_parameters_and_outputs_match_the_concatenating_critic(num_critics, norm_all):
    """Same key, same parameter tree (names, shapes, values: a checkpoint of the earlier critic restores into this
    one) and the same Q for N actions per state, for single and ensemble critics with and without norm_all."""
    config = Config(env="inverted_pendulum", critic_hidden=(8, 6), num_critics=num_critics, critic_norm_all=norm_all)
    ours = make_networks(config, ACT).critic
    theirs = _ConcatenatingCritic.make((8, 6), num_critics, norm_all)
    args = (jnp.zeros((OBS,)), jnp.zeros((ACT,)))
    p_ours, p_theirs = ours.init(jax.random.key(5), *args), theirs.init(jax.random.key(5), *args)
    assert jax.tree.structure(p_ours) == jax.tree.structure(p_theirs)
    for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_theirs)):
        np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(6)
    obs = jnp.asarray(rng.normal(size=(BATCH, OBS)), jnp.float32)
    act = jnp.asarray(rng.uniform(-1, 1, size=(3, BATCH, ACT)), jnp.float32)
    np.testing.assert_allclose(ours.apply(p_ours, obs, act), theirs.apply(p_theirs, obs, act), rtol=1e-5, atol=1e-6)


def _naive_residual_q(trunk, head, x, blocks):
    """BRO's trunk in numpy: Dense → LayerNorm → ReLU, then per block x + LN(Dense(ReLU(LN(Dense(x))))); a Dense head
    (all its outputs: one Q or logits)."""
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    dense = lambda i, v: v @ trunk[f"Dense_{i}"]["kernel"] + trunk[f"Dense_{i}"]["bias"]  # noqa: E731
    norm = lambda i, v: _layer_norm(v, trunk[f"LayerNorm_{i}"]["scale"], trunk[f"LayerNorm_{i}"]["bias"])  # noqa
    h = relu(norm(0, dense(0, x)))
    for b in range(blocks):
        h = h + norm(2 * b + 2, dense(2 * b + 2, relu(norm(2 * b + 1, dense(2 * b + 1, h)))))
    return h @ head["kernel"] + head["bias"]


@pytest.mark.parametrize("num_critics", [1, 2])
@pytest.mark.parametrize("head", ["scalar", "hl_gauss"])
def test_residual_critic_matches_a_numpy_forward_pass(num_critics, head):
    """critic_residual_blocks 2: every parameter randomised, the outputs for N actions per state equal the numpy
    pass above on the broadcast, concatenated input, for one critic and each member of an ensemble, with a
    scalar or a logits head."""
    config = Config(env="inverted_pendulum", critic_hidden=(8,), critic_residual_blocks=2, num_critics=num_critics,
                    critic_head=head, critic_bins=9, reward_range=(0.0, 1.0))
    critic = make_networks(config, ACT).critic
    params = critic.init(jax.random.key(5), jnp.zeros((OBS,)), jnp.zeros((ACT,)))
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(6), len(leaves))
    params = jax.tree_util.tree_unflatten(
        treedef, [leaf + 0.3 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)])
    rng = np.random.default_rng(7)
    obs = rng.normal(size=(BATCH, OBS)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(3, BATCH, ACT)).astype(np.float32)
    out = np.asarray(jax.jit(critic.apply)(params, jnp.asarray(obs), jnp.asarray(act)), np.float64)
    x = np.concatenate([np.broadcast_to(obs, (3, BATCH, OBS)), act], -1).astype(np.float64)
    tree = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), params)["params"]
    members = [tree] if num_critics == 1 else [jax.tree_util.tree_map(lambda v: v[i], tree["members"])
                                               for i in range(num_critics)]
    expected = np.stack([_naive_residual_q(m["ResidualMLP_0"], m["Dense_0"], x, 2) for m in members])
    expected = expected[..., 0] if head == "scalar" else expected  # [K, 3, B(, 7)]
    np.testing.assert_allclose(out, expected[0] if num_critics == 1 else expected, rtol=1e-4, atol=1e-4)
    assert sorted(members[0]["ResidualMLP_0"]) == [f"Dense_{i}" for i in range(5)] + [f"LayerNorm_{i}" for i in range(5)]


def test_a_residual_critic_needs_one_width():
    with pytest.raises(ValueError, match=r"invalid critic_hidden=\(256, 256\)"):
        Config(critic_hidden=(256, 256), critic_residual_blocks=1)
