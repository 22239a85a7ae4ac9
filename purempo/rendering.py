"""Watching a policy: one deterministic episode on the raw env, rendered with Brax's HTML viewer, or for a gymnax
env as pictures (`purempo.frames`: an animated GIF or a PNG strip of frames).

The episode uses the evaluation policy of `purempo.train` (`train.evaluation_action`: the Gaussian's mean clipped
into the action box, a categorical policy's most likely action; normalised observations) on `envs.make(config.env, config.backend, config.impl)` itself, without purempo's time
limit or auto-reset: it runs `max_steps` (default the run's time limit, `envs.time_limit`) steps in one jitted
`lax.scan` and is cut after the first step whose `done` is set. A MuJoCo Playground env is shown through the same
viewer: its MuJoCo model converted by `brax.io.mjcf.load_model`, and each frame the bodies' world positions
and orientations (MJX's `xpos`, `xquat`), which is all the viewer reads from a Brax pipeline state.
"""

from __future__ import annotations

import functools
from typing import Any, List, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from purempo import envs, normalizer
from purempo.config import Config


@functools.lru_cache(maxsize=8)
def _episode_fn(config: Config, num_steps: int):
    """(env, jitted `(policy_params, obs_stats, key) -> (pipeline states [T+1, ...], rewards [T], dones [T])`)."""
    from purempo.train import env_networks, evaluation_action  # deferred: train imports the whole trainer

    env = envs.make(config.env, config.backend, config.impl)
    nets = env_networks(config, env)
    frame = {envs.PLAYGROUND: _playground_frame, envs.GYMNAX: lambda state: state}.get(
        envs.family(config.env), lambda state: state.pipeline_state)

    def episode(policy_params, obs_stats, key):
        first = env.reset(key)

        def body(state, _):
            obs = normalizer.normalize(obs_stats, state.obs)[None]
            action = evaluation_action(nets, policy_params, obs, key, jnp.zeros((1,), bool))[0]
            state = env.step(state, action)
            return state, (frame(state), state.reward, state.done)

        _, (pipeline_states, rewards, dones) = jax.lax.scan(body, first, None, length=num_steps)
        pipeline_states = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), frame(first),
                                       pipeline_states)
        return pipeline_states, rewards, dones

    return env, jax.jit(episode)


class Frame(NamedTuple):
    """What Brax's viewer reads from a pipeline state: `x`, the bodies' world poses (the world body excluded)."""

    x: Any  # brax.base.Transform with pos [bodies, 3] and rot (quaternion, w first) [bodies, 4]


def _playground_frame(state) -> Frame:
    from brax.base import Transform

    return Frame(x=Transform(pos=state.data.xpos[1:], rot=state.data.xquat[1:]))


def episode_frames(config: Config, policy_params, obs_stats: normalizer.RunningStats, key,
                   max_steps: Optional[int] = None) -> Tuple[List[np.ndarray], float]:
    """A gymnax env's `rollout_states` as pictures: (uint8 frames `[H, W, 3]` from `frames.frame`, one per state,
    the first before any step; the episode's return). Write them with `frames.save_gif` or `frames.save_strip`."""
    from purempo import frames

    if envs.family(config.env) != envs.GYMNAX:
        raise ValueError(f"{config.env} is not a gymnax env: render it with render_html (Brax's viewer)")
    _, states, episode_return = _rollout(config, policy_params, obs_stats, key, max_steps)
    return [frames.frame(config.env, state) for state in states], episode_return


def _system(config: Config, env):
    """The Brax `System` the viewer draws: the env's own, or a Playground env's MuJoCo model converted."""
    if envs.family(config.env) == envs.PLAYGROUND:
        import warnings

        from brax.io import mjcf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Brax's notice that its own systems are not maintained
            return mjcf.load_model(env.mj_model)
    return env.sys


def _rollout(config: Config, policy_params, obs_stats, key, max_steps: Optional[int]):
    num_steps = envs.time_limit(config) if max_steps is None else int(max_steps)
    if num_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    env, episode = _episode_fn(config, num_steps)
    stacked, rewards, dones = jax.device_get(episode(policy_params, obs_stats, key))
    finished = np.flatnonzero(np.asarray(dones) > 0.5)
    steps = int(finished[0]) + 1 if finished.size else num_steps  # steps kept, the first done included
    episode_return = float(np.sum(np.asarray(rewards, np.float64)[:steps]))
    states = [jax.tree.map(lambda x, i=i: np.asarray(x[i]), stacked) for i in range(steps + 1)]
    return env, states, episode_return


def rollout_states(config: Config, policy_params, obs_stats: normalizer.RunningStats, key,
                   max_steps: Optional[int] = None) -> Tuple[List[Any], float]:
    """One episode of the deterministic (mean-action) policy from `env.reset(key)`.

    Returns `(states, episode_return)`: the `pipeline_state` (a Playground env: its `Frame`) after reset and after every step up to and
    including the first `done` (at most `max_steps`, default the run's time limit `envs.time_limit(config)`,
    steps, so at most that many + 1 states), ready for `brax.io.html.render(env.sys, states)`, and the sum of the rewards of those steps.
    The jitted episode is cached per `(config, max_steps)`, so later calls do not recompile.
    """
    _, states, episode_return = _rollout(config, policy_params, obs_stats, key, max_steps)
    return states, episode_return


OFFLINE_NOTICE = (
    '<p id="purempo-offline" style="font-family: sans-serif; padding: 1em">Loading the viewer… It loads its '
    "scripts (three.js, Brax's viewer) from unpkg.com and cdn.jsdelivr.net: if this message stays, this browser "
    "is offline or blocks them, and the page cannot show the episode.</p>\n"
    "    <script type=\"module\">import 'viewer'; document.getElementById('purempo-offline').remove();</script>")


def render_html(config: Config, policy_params, obs_stats: normalizer.RunningStats, key, height: int = 480,
                max_steps: Optional[int] = None) -> Tuple[str, float]:
    """`rollout_states` rendered by `brax.io.html.render` (a self-contained page that loads Brax's viewer
    script from a CDN, with `OFFLINE_NOTICE` shown until it has loaded); returns `(html, episode_return)`. Show
    it with `IPython.display.HTML(html)`."""
    from brax.io import html as brax_html

    env, states, episode_return = _rollout(config, policy_params, obs_stats, key, max_steps)
    page = brax_html.render(_system(config, env), states, height=height)
    viewer = '<div id="brax-viewer"></div>'
    return page.replace(viewer, f"{viewer}\n    {OFFLINE_NOTICE}", 1), episode_return
