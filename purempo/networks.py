"""Policy and critic networks (flax.linen).

Both use Acme's layer-norm MLP trunk: Dense → LayerNorm → tanh, then Dense → ELU layers. The layer norm on
the first layer keeps the critic well conditioned across reward scales; the critic can also normalise every
later layer (Dense → LayerNorm → ELU), as Brax SAC's layer-normed Q networks under Playground's settings do.
Each reads its `view` `[start, stop)` of the (normalised) observation, all of it by default: with a Playground
env whose observation separates the actor's `state` from a `privileged_state`, the policy sees only the first and
the critic the second (`purempo.envs.DictObservations`).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import chex
import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from purempo import normalizer

View = Optional[Tuple[int, int]]  # [start, stop) of the observation a network reads; None: all of it


def _view(obs: chex.Array, view: View) -> chex.Array:
    return obs if view is None else obs[..., view[0]:view[1]]


class ConcatDense(nn.Module):
    """`nn.Dense` on the concatenation `[x, y]` (same parameters, kernel `[I_x + I_y, H]`, and initialisation),
    computed as `x·W_x + b + y·W_y` with x's part broadcast over y's extra leading axes: x's product is computed
    once for all of them (the critic's observation for the N actions sampled at a state)."""

    features: int

    @nn.compact
    def __call__(self, x: chex.Array, y: chex.Array) -> chex.Array:
        kernel = self.param("kernel", nn.initializers.lecun_uniform(), (x.shape[-1] + y.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return (x @ kernel[:x.shape[-1]] + bias) + y @ kernel[x.shape[-1]:]


class LayerNormMLP(nn.Module):
    """`norm_all_layers`: a LayerNorm before each later ELU too, not only before the first layer's tanh.
    `extra`: a second input concatenated to x's last axis (`ConcatDense`), broadcasting x over its leading axes."""

    hidden: Sequence[int]
    norm_all_layers: bool = False

    @nn.compact
    def __call__(self, x, extra=None):
        # Layers named as flax names them (Dense_i, LayerNorm_i), whichever first layer is used.
        if extra is None:
            x = nn.Dense(self.hidden[0], kernel_init=nn.initializers.lecun_uniform(), name="Dense_0")(x)
        else:
            x = ConcatDense(self.hidden[0], name="Dense_0")(x, extra)
        x = jnp.tanh(nn.LayerNorm(name="LayerNorm_0")(x))
        norms = 1
        for i, size in enumerate(self.hidden[1:], start=1):
            x = nn.Dense(size, kernel_init=nn.initializers.lecun_uniform(), name=f"Dense_{i}")(x)
            if self.norm_all_layers:
                x, norms = nn.LayerNorm(name=f"LayerNorm_{norms}")(x), norms + 1
            x = nn.elu(x)
        return x


class ResidualMLP(nn.Module):
    """BRO's critic trunk (Nauman et al. 2024, "Bigger, Regularized, Optimistic"): Dense → LayerNorm → ReLU of
    `width`, then `num_blocks` residual blocks x + LN(Dense(ReLU(LN(Dense(x))))). The pre-activation layer norms
    keep a wide, deep critic trainable at high replay ratios. `extra` as in `LayerNormMLP`."""

    width: int
    num_blocks: int

    @nn.compact
    def __call__(self, x, extra=None):
        dense = lambda i: nn.Dense(self.width, kernel_init=nn.initializers.lecun_uniform(), name=f"Dense_{i}")  # noqa
        x = dense(0)(x) if extra is None else ConcatDense(self.width, name="Dense_0")(x, extra)
        x = nn.relu(nn.LayerNorm(name="LayerNorm_0")(x))
        for block in range(self.num_blocks):
            h = nn.relu(nn.LayerNorm(name=f"LayerNorm_{2 * block + 1}")(dense(2 * block + 1)(x)))
            x = x + nn.LayerNorm(name=f"LayerNorm_{2 * block + 2}")(dense(2 * block + 2)(h))
        return x


def _critic_trunk(hidden: Sequence[int], norm_all_layers: bool, residual_blocks: int) -> nn.Module:
    return (LayerNormMLP(hidden, norm_all_layers) if residual_blocks == 0 else
            ResidualMLP(hidden[0], residual_blocks))


class GaussianPolicy(nn.Module):
    """π_θ(a|s) = N(mean(s), diag(std(s)²)); std = softplus(·) + min_std, initialised near init_std."""

    hidden: Sequence[int]
    action_dim: int
    min_std: float = 1e-3
    init_std: float = 0.7
    view: View = None

    @nn.compact
    def __call__(self, obs: chex.Array) -> Tuple[chex.Array, chex.Array]:
        h = LayerNormMLP(self.hidden)(_view(obs, self.view))
        mean = nn.Dense(self.action_dim, kernel_init=nn.initializers.variance_scaling(1e-4, "fan_in", "uniform"))(h)
        offset = jnp.log(jnp.expm1(self.init_std - self.min_std))  # softplus⁻¹ so the initial std ≈ init_std
        raw_std = nn.Dense(self.action_dim, kernel_init=nn.initializers.variance_scaling(1e-4, "fan_in", "uniform"))(h)
        std = jax.nn.softplus(raw_std + offset) + self.min_std
        return mean, std


def _q_output(h: chex.Array, num_bins: int, initial_logits: Optional[Tuple[float, ...]]) -> chex.Array:
    """The critic's last layer: a scalar Q `[...]`, or `[..., num_bins]` logits over a value support, starting at
    `initial_logits` for every input (a small kernel, like the policy's mean head; default: uniform)."""
    if num_bins == 0:
        return nn.Dense(1)(h)[..., 0]
    bias = (nn.initializers.zeros_init() if initial_logits is None else
            lambda key, shape, dtype=jnp.float32: jnp.asarray(initial_logits, dtype).reshape(shape))
    return nn.Dense(num_bins, kernel_init=nn.initializers.variance_scaling(1e-4, "fan_in", "uniform"),
                    bias_init=bias)(h)


class QHead(nn.Module):
    """One Q network on the concatenated (observation, action) input."""

    hidden: Sequence[int]
    norm_all_layers: bool = False
    num_bins: int = 0
    initial_logits: Optional[Tuple[float, ...]] = None
    residual_blocks: int = 0

    @nn.compact
    def __call__(self, obs: chex.Array, action: chex.Array) -> chex.Array:
        trunk = _critic_trunk(self.hidden, self.norm_all_layers, self.residual_blocks)
        return _q_output(trunk(obs, action), self.num_bins, self.initial_logits)


class Critic(nn.Module):
    """Q_φ(s, a) → scalar per (state, action) pair, or with `num_bins` > 0 logits `[..., num_bins]` over a value
    support (`purempo.distributional`), starting at `initial_logits` (default: uniform); leading dims broadcast
    (obs `[..., O]` against actions `[N, ..., A]`: N actions per state).

    `num_members` > 1 makes an ensemble of independently initialised Q networks (parameters stacked on a leading
    axis under "members") and the output gains a leading `[K]` axis; 1 keeps a single network and no such axis.
    `norm_all_layers`: normalise every hidden layer, not only the first (see `LayerNormMLP`).
    `residual_blocks` > 0: BRO's residual trunk of width `hidden[0]` with that many blocks (`ResidualMLP`).
    """

    hidden: Sequence[int]
    num_members: int = 1
    view: View = None
    norm_all_layers: bool = False
    num_bins: int = 0
    initial_logits: Optional[Tuple[float, ...]] = None
    residual_blocks: int = 0

    @nn.compact
    def __call__(self, obs: chex.Array, action: chex.Array) -> chex.Array:
        # The first layer sees [obs, action]; obs's part is computed once for all the actions it is broadcast to.
        obs = _view(obs, self.view)
        if self.num_members == 1:
            trunk = _critic_trunk(self.hidden, self.norm_all_layers, self.residual_blocks)
            return _q_output(trunk(obs, action), self.num_bins, self.initial_logits)
        members = nn.vmap(QHead, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None,
                          out_axes=0, axis_size=self.num_members)
        return members(self.hidden, self.norm_all_layers, self.num_bins, self.initial_logits, self.residual_blocks,
                       name="members")(obs, action)


class ImageTorso(nn.Module):
    """A flat observation `[..., H·W·C]` read as images `[H, W, C]`: a 3×3 convolution of `features` channels
    (stride 1, no padding) and ReLU, flattened again (the network of MinAtar's own agents, Young and Tian 2019);
    leading dims broadcast."""

    image_shape: Tuple[int, int, int]
    features: int = 16

    @nn.compact
    def __call__(self, obs: chex.Array) -> chex.Array:
        lead = obs.shape[:-1]
        x = obs.reshape((-1,) + tuple(self.image_shape))
        x = nn.relu(nn.Conv(self.features, (3, 3), padding="VALID", name="Conv_0")(x))
        return x.reshape(lead + (-1,))


def _torso(image_shape: Optional[Tuple[int, ...]]):
    """`ImageTorso` for an image shape `[H, W, C]`, else the identity (the MLP reads the flat observation)."""
    return (lambda obs: obs) if image_shape is None else ImageTorso(tuple(image_shape), name="ImageTorso_0")


class CategoricalPolicy(nn.Module):
    """π_θ(·|s) over `num_actions` discrete actions: logits `[..., K]` (the probability floor is applied outside,
    `purempo.discrete.floored_log_probs`, since it is a vmappable hyper-parameter). The last layer starts near 0,
    so every action starts equally likely. `image_shape`: read the observation through `ImageTorso`."""

    hidden: Sequence[int]
    num_actions: int
    view: View = None
    image_shape: Optional[Tuple[int, ...]] = None

    @nn.compact
    def __call__(self, obs: chex.Array) -> chex.Array:
        h = LayerNormMLP(self.hidden)(_torso(self.image_shape)(_view(obs, self.view)))
        return nn.Dense(self.num_actions, kernel_init=nn.initializers.variance_scaling(1e-4, "fan_in", "uniform"))(h)


def _action_values(obs, hidden, num_actions, norm_all_layers, image_shape) -> chex.Array:
    """Q(s, ·) `[..., K]` in the calling module's scope (its layers named as that module's own)."""
    return nn.Dense(num_actions)(LayerNormMLP(hidden, norm_all_layers)(_torso(image_shape)(obs)))


class DiscreteQHead(nn.Module):
    """One network of Q(s, ·) `[..., K]`, every action's value in one pass."""

    hidden: Sequence[int]
    num_actions: int
    norm_all_layers: bool = False
    image_shape: Optional[Tuple[int, ...]] = None

    @nn.compact
    def __call__(self, obs: chex.Array) -> chex.Array:
        return _action_values(obs, self.hidden, self.num_actions, self.norm_all_layers, self.image_shape)


class DiscreteCritic(nn.Module):
    """Q_φ(s, ·) → `[..., K]` for discrete actions: the E-step, V(s) = Σ_a π(a|s) Q(s, a) and the taken action's
    value all come from one pass per state. `num_members` > 1: an ensemble (leading `[M]` axis), as `Critic`."""

    hidden: Sequence[int]
    num_actions: int
    num_members: int = 1
    view: View = None
    norm_all_layers: bool = False
    image_shape: Optional[Tuple[int, ...]] = None

    @nn.compact
    def __call__(self, obs: chex.Array) -> chex.Array:
        obs = _view(obs, self.view)
        if self.num_members == 1:
            return _action_values(obs, self.hidden, self.num_actions, self.norm_all_layers, self.image_shape)
        members = nn.vmap(DiscreteQHead, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None,
                          out_axes=0, axis_size=self.num_members)
        return members(self.hidden, self.num_actions, self.norm_all_layers, self.image_shape, name="members")(obs)


def distribution(mean: chex.Array, std: chex.Array) -> distrax.MultivariateNormalDiag:
    """The policy's action distribution (batch over leading dims, event over the last)."""
    return distrax.MultivariateNormalDiag(mean, std)


def preserve_outputs(params, old_stats, new_stats, view: View = None):
    """Policy or critic `params` re-parametrised so that the network computes the same function of the raw
    observation after the normaliser moved from `old_stats` to `new_stats` (see
    `normalizer.preserve_first_layer`): updating the statistics then changes how inputs are conditioned,
    never what a policy does or what a critic predicts, so it cannot move a policy outside its trust region.
    `view`: the network's slice of the observation (its first layer sees only those statistics)."""
    if view is not None:
        old_stats, new_stats = (stats._replace(mean=stats.mean[view[0]:view[1]],
                                               sum_sq_dev=stats.sum_sq_dev[view[0]:view[1]])
                                for stats in (old_stats, new_stats))
    if "members" in params["params"]:  # an ensemble critic: first layers stacked on a leading member axis
        members = preserve_outputs({"params": params["params"]["members"]}, old_stats, new_stats)
        return {**params, "params": {**params["params"], "members": members["params"]}}
    name = "LayerNormMLP_0" if "LayerNormMLP_0" in params["params"] else "ResidualMLP_0"
    layer = params["params"][name]["Dense_0"]
    preserve = normalizer.preserve_first_layer
    if layer["kernel"].ndim == 3:
        preserve = jax.vmap(preserve, in_axes=(0, 0, None, None))
    kernel, bias = preserve(layer["kernel"], layer["bias"], old_stats, new_stats)
    trunk = {**params["params"][name], "Dense_0": {**layer, "kernel": kernel, "bias": bias}}
    return {**params, "params": {**params["params"], name: trunk}}
