"""Environments from three families, vectorised, with a time limit and an auto-reset of our own.

Families: Brax's legacy envs (`ant`, `halfcheetah`, ...: `brax.envs`), MuJoCo Playground's MJX envs
(`CheetahRun`, `WalkerWalk`, ...: `mujoco_playground.registry`) and gymnax's discrete-action classic control and
MinAtar envs (`CartPole-v1`, `Breakout-MinAtar`, ...: `gymnax.make`, adapted by `GymnaxEnv`). All expose the same
small interface, which is all the trainer uses: `reset(key) -> state`, `step(state, action) -> state` with
`state.obs`, `state.reward`, `state.done`, and `action_size`; a discrete env also has `num_actions` (see
`num_actions`). `make` picks the family from the name; a Playground env additionally gets its config's
`action_repeat` applied here (Playground leaves it to its Brax training wrapper).

Brax's `EpisodeWrapper` + `AutoResetWrapper` lose the final observation of a truncated episode (it is
replaced by a cached first observation) and restart every episode of an env from the same state. Here:
- `terminated` (the task says the episode ended) and `truncated` (the time limit was hit) are kept apart;
- `final_obs` is always the true observation after the step, used to bootstrap at a time limit;
- a finished env restarts from a fresh initial state: one drawn uniformly (fresh key each time) from a pool
  of `env.reset` states drawn once at `reset`, with a fresh `info["rng"]` (a Playground env's per-episode
  randomness, a gymnax env's per-step randomness), or, with no pool, from `env.reset` itself. The pool avoids
  running (and compiling) the reset inside every training step; with thousands of pool states the starts
  are as varied as fresh resets for practical purposes, while Brax's wrapper reuses one state per env.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
import warnings
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from purempo.config import PLAYGROUND_IMPLS

BRAX, PLAYGROUND, GYMNAX = "brax", "playground", "gymnax"


@functools.lru_cache(maxsize=None)
def _brax_envs():
    with contextlib.redirect_stdout(io.StringIO()):  # mujoco's optional-backend probe prints to stdout
        from brax import envs as brax_envs
    return brax_envs


@functools.lru_cache(maxsize=None)
def _playground():
    """(registry, {family part: names}) of MuJoCo Playground; importing it takes seconds, so only on demand."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mujoco_playground import dm_control_suite, locomotion, manipulation, registry
    parts = {"dm_control_suite": tuple(dm_control_suite.ALL_ENVS), "locomotion": tuple(locomotion.ALL_ENVS),
             "manipulation": tuple(manipulation.ALL_ENVS)}
    return registry, parts


@functools.lru_cache(maxsize=None)
def _gymnax():
    """The gymnax package; importing it takes seconds, so only on demand."""
    import gymnax

    return gymnax


def brax_names() -> Tuple[str, ...]:
    """Names accepted by `brax.envs.get_environment` (Brax keeps its registry in `envs._envs`)."""
    return tuple(sorted(_brax_envs()._envs))


def playground_names() -> Tuple[str, ...]:
    """Names in MuJoCo Playground's registry: DM Control Suite, locomotion and manipulation envs."""
    return tuple(name for names in _playground()[1].values() for name in names)


def dm_control_names() -> Tuple[str, ...]:
    """Playground's DeepMind Control Suite envs (their assets ship with Playground)."""
    return _playground()[1]["dm_control_suite"]


# Every discrete-action env of gymnax 1.0.1's classic control and MinAtar sets; each builds, resets and steps
# under jit and vmap (tests/test_gymnax_envs.py). Its continuous-action, bsuite and misc envs are not offered.
_GYMNAX_NAMES = ("CartPole-v1", "Acrobot-v1", "MountainCar-v0", "Asterix-MinAtar", "Breakout-MinAtar",
                 "Freeway-MinAtar", "SpaceInvaders-MinAtar", "Seaquest-MinAtar")


def gymnax_names() -> Tuple[str, ...]:
    """The gymnax envs purempo trains (discrete actions: classic control and MinAtar); no import needed."""
    return _GYMNAX_NAMES


TEST_ENVS = frozenset({"fast"})  # Brax's env for its own tests: accepted, never suggested or listed


def family(name: str) -> str:
    """`BRAX`, `PLAYGROUND` or `GYMNAX`; ValueError (`unknown_env_message`) for an unknown name. A gymnax name is
    recognised without importing any simulator."""
    if name in gymnax_names():
        return GYMNAX
    if name in brax_names():
        return BRAX
    if name in playground_names():
        return PLAYGROUND
    raise ValueError(unknown_env_message(name))


def available() -> Tuple[str, ...]:
    """Every env name `make` accepts: Brax's, then Playground's, then gymnax's."""
    return brax_names() + playground_names() + gymnax_names()


def _folded(name: str) -> str:
    """A name without case, underscores, hyphens or spaces: `cheetah_run`, `cheetahrun` and `CheetahRun` agree."""
    return "".join(c for c in name.lower() if c.isalnum())


def resolve_name(name: str) -> str:
    """The env `name` stands for: itself if known, else the one known name it matches without case and
    separators (`halfcheetah` for `HalfCheetah`, `CheetahRun` for `cheetah_run`); ValueError otherwise."""
    names = available()
    if name in names:
        return name
    matches = [known for known in names if _folded(known) == _folded(name)]
    if len(matches) == 1:
        return matches[0]
    raise ValueError(unknown_env_message(name, matches))


def unknown_env_message(name: str, candidates: Tuple[str, ...] = ()) -> str:
    """One line: `name` is unknown, the closest known names, and where the full list of the three families is."""
    import difflib

    folded = {_folded(known): known for known in available() if known not in TEST_ENVS}
    close = list(candidates) or [folded[f] for f in difflib.get_close_matches(_folded(name), folded, n=3, cutoff=0.6)]
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return (f"unknown env {name!r}; {hint}`purempo envs` lists the Brax (ant, ...), MuJoCo Playground (CheetahRun, "
            f"...) and gymnax (CartPole-v1, ...) envs")


def menagerie_present() -> bool:
    """Whether MuJoCo Menagerie's assets (Playground's locomotion and manipulation robots) are installed."""
    from mujoco_playground._src import mjx_env

    return mjx_env.MENAGERIE_PATH.exists()


def catalogue() -> Tuple[Tuple[str, Tuple[str, ...], str], ...]:
    """(family, names, whether they run on this install) for `purempo envs`."""
    _, parts = _playground()
    robots = ("runs" if menagerie_present() else
              "needs MuJoCo Menagerie's assets, which Playground downloads with git at first use (not present)")
    return (("Brax", tuple(n for n in brax_names() if n not in TEST_ENVS), "runs"),
            ("MuJoCo Playground, DeepMind Control Suite", parts["dm_control_suite"], "runs (its assets ship with Playground)"),
            ("MuJoCo Playground, locomotion", parts["locomotion"], robots),
            ("MuJoCo Playground, manipulation", parts["manipulation"], robots),
            ("gymnax, classic control and MinAtar (discrete actions)", gymnax_names(), "runs"))


# Warp's batched state keeps some arrays (contacts, their counts) shared by the whole batch; `per_env_leaves`
# finds them, and restarts, pools and evaluation keep them as the step left them, as MJX's own `Data.where`
# and Playground's auto-reset wrapper do (the next step's collision pass rebuilds them from the positions).
SUPPORTED_IMPLS = ("jax", "warp")


def platform() -> str:
    """The default device's platform: "cpu", "tpu", or for a GPU its vendor's stack, "cuda" or "rocm" (JAX
    calls both "gpu")."""
    backend = jax.default_backend()
    if backend != "gpu":
        return backend
    return "rocm" if "rocm" in jax.devices()[0].client.platform_version.lower() else "cuda"


def default_impl(on: Optional[str] = None) -> str:
    """The physics a Playground env gets when `impl` is None, on `platform()` `on` (default: this process's):
    MuJoCo Warp on an NVIDIA GPU, which it was written for ("to optimize performance specifically for NVIDIA
    GPUs, resolving several performance bottlenecks exhibited in MJX-JAX", MuJoCo's MJX documentation), MJX
    elsewhere: on a CPU MJX steps CheetahRun 2.2–7.7× faster (benchmarks/throughput.py), and Warp runs on no
    other accelerator. An NVIDIA GPU without the `warp` package (a machine that could not install warp-lang)
    gets MJX rather than an error at the first env."""
    if (platform() if on is None else on) != "cuda":
        return "jax"
    return "warp" if importlib.util.find_spec("warp") is not None else "jax"


def menagerie_missing(name: str) -> Optional[str]:
    """Why Playground env `name` cannot be built here, or None: its locomotion and manipulation envs load
    robot assets from MuJoCo Menagerie, which Playground clones with git at first use."""
    from mujoco_playground._src import mjx_env

    needs = name in _playground()[1]["locomotion"] or name in _playground()[1]["manipulation"]
    if needs and not os.path.isdir(str(mjx_env.MENAGERIE_PATH)):
        return (f"env {name!r} needs MuJoCo Menagerie's robot assets, which Playground clones with git at first "
                f"use into {mjx_env.MENAGERIE_PATH} (commit {mjx_env.MENAGERIE_COMMIT_SHA}); that folder is "
                f"missing: clone https://github.com/google-deepmind/mujoco_menagerie there, or use a DM Control "
                f"env ({', '.join(dm_control_names()[:3])}, ...), whose assets ship with Playground")
    return None


class Views(NamedTuple):
    """The slices `[start, stop)` of an env's flat observation that the policy and the critic read; None: all."""

    policy: Optional[Tuple[int, int]] = None
    critic: Optional[Tuple[int, int]] = None


def views(env) -> Views:
    """The env's `Views`: set by `DictObservations`; an env with a plain array observation shows all of it to both."""
    return getattr(env, "views", Views())


class _Wrapper:
    """Forwards everything but what a subclass overrides (action_size, mj_model, dt, views, ...) to `env`."""

    def __init__(self, env):
        self.env = env

    def __getattr__(self, name):
        if name == "env":  # not set yet (copying, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.env, name)


class DictObservations(_Wrapper):
    """An env whose observation is a dict (Playground's convention: `state` for the actor and, where present,
    `privileged_state`, which only a critic may see) as one with a flat observation `[state, privileged_state]`
    and `views` saying which part each network reads. Other keys are dropped. Replay, normaliser and evaluation
    then handle one array, as for any env; `networks` slice their inputs by the views."""

    def __init__(self, env, policy_key: str = "state", critic_key: str = "privileged_state"):
        shapes = jax.eval_shape(env.reset, jax.random.PRNGKey(0)).obs
        if policy_key not in shapes:
            raise ValueError(f"the env's observation dict has no {policy_key!r} entry for the policy; keys: "
                             f"{', '.join(sorted(shapes))}")
        super().__init__(env)
        self.keys = (policy_key,) + ((critic_key,) if critic_key in shapes else ())
        sizes = [int(np.prod(shapes[key].shape)) for key in self.keys]
        critic = (sizes[0], sizes[0] + sizes[1]) if len(sizes) > 1 else (0, sizes[0])
        self.views = Views(policy=(0, sizes[0]), critic=critic)

    _DICT = "purempo/observation_dict"  # where the wrapped env's own observation rides along in `info`

    def _flat(self, state):
        flat = jnp.concatenate([jnp.ravel(state.obs[key]) for key in self.keys])
        return state.replace(obs=flat, info={**state.info, self._DICT: state.obs})

    def reset(self, key):
        return self._flat(self.env.reset(key))

    def step(self, state, action):
        info = dict(state.info)
        obs = info.pop(self._DICT)  # the wrapped step gets back exactly the state it produced
        return self._flat(self.env.step(state.replace(obs=obs, info=info), action))


class ActionRepeat(_Wrapper):
    """A Playground env stepped `repeat` times per action, rewards summed; the interface of the env itself.

    After a terminating sub-step the state stays there (its reward counted once), as a time-limited episode
    of the unwrapped env would end there."""

    def __init__(self, env, repeat: int):
        super().__init__(env)
        self.repeat = int(repeat)

    def reset(self, key):
        return self.env.reset(key)

    def step(self, state, action):
        def body(carry, _):
            current, total = carry
            stepped = self.env.step(current, action)
            done = current.done > 0.5
            nxt = _per_env_map(self.env, lambda new, old: jnp.where(done, old, new), stepped, current)
            return (nxt, total + jnp.where(done, 0.0, stepped.reward)), None

        (state, total), _ = jax.lax.scan(body, (state, jnp.zeros_like(state.reward)), None, length=self.repeat)
        return state.replace(reward=total)


@struct.dataclass
class GymnaxState:
    """One gymnax env's state in the fields the trainer reads (those of a Brax state); a pytree with `replace`."""

    obs: jax.Array  # float32 [O]: gymnax's observation, flattened (MinAtar's [10, 10, C] channels row by row)
    reward: jax.Array  # float32 []
    done: jax.Array  # float32 []: 1.0 where the task terminated; never for a time limit (`step`'s is ours)
    env_state: Any  # gymnax's own state (CartPole's x, x_dot, theta, theta_dot, time; MinAtar's grid objects)
    info: Dict[str, Any]  # {"rng": key [2]}: the key the next step's randomness comes from (`_fresh_rng`)


NO_TIME_LIMIT = 2**30  # gymnax's `max_steps_in_episode` in a GymnaxEnv: never reached, the time limit is ours


class GymnaxEnv:
    """gymnax's env `name` (`gymnax.make`) with the interface of a Brax env and no auto-reset of its own.

    `reset(key)` and `step(state, action)` give `GymnaxState`s through gymnax's `reset_env` and `step_env` (its
    `step` would auto-reset, hiding the terminal observation; `envs.step` restarts finished envs instead). The
    key of a step's randomness (MinAtar's spawns) is split off `state.info["rng"]`, so copies of one pool state
    given fresh keys (`_fresh_rng`) play out differently. The params have `max_steps_in_episode` raised to
    `NO_TIME_LIMIT`: gymnax 1.0.1's `step_env` reports termination only (`is_terminal` no longer checks time),
    and the raised limit keeps any time check there from firing; the time limit is `episode_length(name)`.

    Actions are discrete: `action` is an int32 index [] in [0, num_actions). `action_size` is `num_actions` too
    (code that only sizes arrays by it keeps working); the trainer tells a discrete env by `num_actions(env)`.
    """

    discrete = True

    def __init__(self, name: str):
        if name not in gymnax_names():
            raise ValueError(f"{name!r} is not a gymnax env purempo trains; those are {', '.join(gymnax_names())}")
        env, params = _gymnax().make(name)
        self.name = name
        self.gymnax_env = env
        self.params = params.replace(max_steps_in_episode=NO_TIME_LIMIT)
        self.num_actions = int(env.num_actions)
        self.action_size = self.num_actions
        self.observation_shape = tuple(int(n) for n in env.observation_space(self.params).shape)

    def _state(self, obs, env_state, reward, done, rng) -> GymnaxState:
        return GymnaxState(obs=jnp.ravel(obs).astype(jnp.float32), reward=jnp.asarray(reward, jnp.float32),
                           done=jnp.asarray(done, jnp.float32), env_state=env_state, info={"rng": rng})

    def reset(self, key: chex.PRNGKey) -> GymnaxState:
        """A fresh episode: `reset_env` with the first half of `jax.random.split(key)`; the second is `info["rng"]`."""
        reset_key, rng = jax.random.split(key)
        obs, env_state = self.gymnax_env.reset_env(reset_key, self.params)
        # gymnax starts some counters as Python ints: arrays, so that every state has leaves of one kind
        env_state = jax.tree.map(jnp.asarray, env_state)
        return self._state(obs, env_state, 0.0, False, rng)

    def step(self, state: GymnaxState, action: chex.Array) -> GymnaxState:
        """`step_env` with the first half of `jax.random.split(state.info["rng"])`; the second is the next rng."""
        if not jnp.issubdtype(jnp.asarray(action).dtype, jnp.integer):
            raise TypeError(f"{self.name} takes an integer action index in [0, {self.num_actions}), got "
                            f"{jnp.asarray(action).dtype} (a continuous policy's action?)")
        step_key, rng = jax.random.split(state.info["rng"])
        obs, env_state, reward, done, _ = self.gymnax_env.step_env(
            step_key, state.env_state, jnp.asarray(action).astype(jnp.int32), self.params)
        return self._state(obs, env_state, reward, done, rng)


def num_actions(env) -> Optional[int]:
    """K for an env with K discrete actions (a `GymnaxEnv`, wrapped or not), None for one with continuous
    actions (Brax, Playground: those have `action_size` dimensions)."""
    return int(env.num_actions) if getattr(env, "discrete", False) else None


def observation_shape(env) -> Tuple[int, ...]:
    """The env's observation before flattening (MinAtar's `(10, 10, C)` channels); `(observation_size(env),)`
    for an env with a flat observation."""
    shape = getattr(env, "observation_shape", None)
    return tuple(shape) if shape is not None else (observation_size(env),)


def make(name: str, backend: Optional[str] = None, impl: Optional[str] = None):
    """The raw env `name` (no time limit, no auto-reset): Brax's (`backend`: its physics pipeline, None for
    the env's default), Playground's (`impl`: one of `SUPPORTED_IMPLS`, None for `default_impl()`) or gymnax's
    (`GymnaxEnv`; neither), with dict observations flattened (`DictObservations`) and the config's
    `action_repeat` applied to a Playground env."""
    kind = family(name)
    if kind == GYMNAX:
        if backend is not None or impl is not None:
            given = f"backend={backend!r}" if backend is not None else f"impl={impl!r}"
            raise ValueError(f"invalid {given} for gymnax env {name!r}: backend and impl select a Brax or MuJoCo "
                             f"Playground env's physics; gymnax envs take neither")
        return GymnaxEnv(name)
    if kind == BRAX:
        if impl is not None:
            raise ValueError(f"invalid impl={impl!r} for Brax env {name!r}: impl selects a MuJoCo Playground "
                             f"env's physics; Brax envs take backend")
        kwargs = {} if backend is None else {"backend": backend}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Brax System, piplines and environments")
            with _local_devices_only():
                return _brax_envs().get_environment(name, **kwargs)
    if backend is not None:
        raise ValueError(f"invalid backend={backend!r} for MuJoCo Playground env {name!r}: backend selects a "
                         f"Brax env's pipeline; Playground envs take impl ({' or '.join(PLAYGROUND_IMPLS)})")
    with _local_devices_only(), native_output_quieted():
        env = _quiet_solver(playground_env(name, default_impl() if impl is None else impl))
    registry = _playground()[0]
    if isinstance(jax.eval_shape(env.reset, jax.random.PRNGKey(0)).obs, Mapping):
        env = DictObservations(env)
    repeat = int(registry.get_default_config(name).get("action_repeat", 1))
    return ActionRepeat(env, repeat) if repeat > 1 else env


VERBOSE_VARIABLE = "PUREMPO_VERBOSE"
"""Set (to anything but 0 or empty; `purempo train -v` sets it) to see what the simulators print natively."""


@contextlib.contextmanager
def native_output_quieted():
    """Silences what native code prints to stdout/stderr (MuJoCo's deprecation notices while compiling a model)
    inside the block, unless `$PUREMPO_VERBOSE` is set; Python exceptions still propagate."""
    if os.environ.get(VERBOSE_VARIABLE, "") not in ("", "0"):
        yield
        return
    import sys

    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _quiet_solver(env):
    """A MuJoCo Warp env whose solver does not print a line each time an iteration limit is reached (hundreds per
    run: `warn_overflow`, MuJoCo Warp's own switch) and whose kernels load without a line each (Warp's log level),
    unless `$PUREMPO_VERBOSE` is set; other envs unchanged."""
    model = getattr(env, "_mjx_model", None)
    impl = getattr(getattr(model, "opt", None), "_impl", None)
    if impl is None or not hasattr(impl, "warn_overflow") or os.environ.get(VERBOSE_VARIABLE, "") not in ("", "0"):
        return env
    import warp

    # Nor a line per kernel module loaded ("Module ... load on device ... took ..."), logged at Warp's INFO level.
    warp.config.log_level = max(warp.config.log_level, warp.LOG_WARNING)
    env._mjx_model = model.replace(opt=model.opt.replace(_impl=impl.replace(warn_overflow=0)))
    return env


@contextlib.contextmanager
def _local_devices_only():
    """While building an env: `jax.devices()` lists this process's devices only. MJX puts a model on
    `jax.devices()[0]`, which in a multi-process run (`jax.distributed.initialize`) belongs to process 0, so
    another process would hold arrays it cannot read (nor compile a program that closes over them)."""
    if jax.process_count() == 1:
        yield
        return
    devices = jax.devices
    jax.devices = lambda backend=None: jax.local_devices(backend=backend)
    try:
        yield
    finally:
        jax.devices = devices


def playground_env(name: str, impl: str):
    """Playground's own env `name` on physics `impl` ("jax" or "warp"), unwrapped; ValueError (one line) for an
    unknown name or missing Menagerie assets. `make` is what the trainer uses."""
    kind = family(name)
    if kind != PLAYGROUND:
        raise ValueError(f"{name!r} is a {'Brax' if kind == BRAX else 'gymnax'} env, not a MuJoCo Playground env")
    if impl not in PLAYGROUND_IMPLS:
        raise ValueError(f"invalid impl={impl!r}: must be one of {PLAYGROUND_IMPLS}")
    missing = menagerie_missing(name)
    if missing:
        raise ValueError(missing)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _playground()[0].load(name, config_overrides={"impl": impl})


def episode_length(name: str) -> int:
    """The env's own time limit in agent steps: Brax's 1000; a Playground env's `episode_length` (counted in
    env steps, as its Brax wrapper does) divided by its `action_repeat`; a gymnax env's default
    `max_steps_in_episode` (CartPole-v1 500, MountainCar-v0 200, MinAtar 1000, Freeway 2500)."""
    kind = family(name)
    if kind == GYMNAX:
        return int(_gymnax().make(name)[1].max_steps_in_episode)
    if kind == BRAX:
        return 1000
    config = _playground()[0].get_default_config(name)
    return int(config.episode_length) // int(config.get("action_repeat", 1))


def time_limit(config) -> int:
    """The run's time limit in agent steps: `config.episode_length`, or when None the env's own
    (`episode_length(config.env)`). Every consumer of the limit reads it here."""
    return episode_length(config.env) if config.episode_length is None else int(config.episode_length)


def observation_size(env) -> int:
    """Observation width, found by tracing `env.reset` (Brax's `env.observation_size` runs it eagerly, op by op,
    which costs seconds of compilation)."""
    return jax.eval_shape(env.reset, jax.random.PRNGKey(0)).obs.shape[-1]


class EnvState(NamedTuple):
    """Batched state of `num_envs` environments (leading axis E)."""

    sim_state: Any  # the env family's state (brax.envs.State, mujoco_playground State) with leaves [E, ...]
    episode_step: chex.Array  # int32 [E]: steps taken in the current episode
    episode_return: chex.Array  # float32 [E]: unscaled return so far in the current episode
    reset_pool: Any = None  # states with leaves [P, ...] that finished envs restart from; None: env.reset


class StepResult(NamedTuple):
    final_obs: chex.Array  # [E, O] observation after the step (before any reset)
    reward: chex.Array  # [E]
    terminated: chex.Array  # bool [E]
    truncated: chex.Array  # bool [E]: time limit reached and not terminated
    finished_return: chex.Array  # [E] return of the episode that ended at this step (0 where none ended; NaN for
    #                              a staggered first episode, `reset`)
    nonfinite: chex.Array  # bool [E]: the env's observation or reward was not finite (so: terminated, reward 0)


@functools.lru_cache(maxsize=None)
def per_env_leaves(env: Any):
    """A pytree like `env`'s state of bools: True for a leaf that `vmap(env.reset)` gives a batch axis, False
    for one the batch shares (MuJoCo Warp's contact arrays and counts; none for MJX and Brax)."""
    single = jax.eval_shape(env.reset, jax.random.PRNGKey(0))
    batched = jax.eval_shape(jax.vmap(env.reset), jax.random.split(jax.random.PRNGKey(0), 2))
    return jax.tree.map(lambda s, b: b.ndim == s.ndim + 1, single, batched)


def _per_env_map(env: Any, fn, tree, *rest):
    """`jax.tree.map(fn, tree, *rest)` on the per-env leaves; a shared leaf keeps `tree`'s value."""
    return jax.tree.map(lambda per_env, x, *r: fn(x, *r) if per_env else x, per_env_leaves(env), tree, *rest)


def reset(env: Any, key: chex.PRNGKey, num_envs: int, pool_size: int = 0, stagger: int = 0) -> EnvState:
    """`num_envs` fresh envs and, if `pool_size` > 0, a pool of `pool_size` more initial states for restarts.

    `stagger` T > 0 (the time limit): each env's step counter starts at a value drawn uniformly from [0, T), so
    the time limit truncates the envs on spread-out steps instead of all on the same one (an env that never
    terminates would otherwise keep them in lockstep for the whole run). Exact: a truncation bootstraps. Such a
    shortened first episode's return is NaN, so `step` reports its `finished_return` as NaN and `acting.rollout`
    does not count it.
    """
    states = jax.vmap(env.reset)(jax.random.split(key, num_envs + pool_size))
    sim_state = _per_env_map(env, lambda x: x[:num_envs], states)
    pool = _per_env_map(env, lambda x: x[num_envs:], states) if pool_size > 0 else None
    episode_step = jnp.zeros((num_envs,), jnp.int32)
    if stagger > 0:
        episode_step = jax.random.randint(jax.random.fold_in(key, 2), (num_envs,), 0, stagger)
    return EnvState(
        sim_state=sim_state,
        episode_step=episode_step,
        episode_return=jnp.where(episode_step > 0, jnp.nan, 0.0).astype(jnp.float32),
        reset_pool=pool,
    )


def initial_states(env: Any, key: chex.PRNGKey, num: int, pool=None):
    """`num` initial states: drawn uniformly from `pool` (per-env leaves `[P, ...]`), each with a fresh
    `info["rng"]` where it has one (`_fresh_rng`), if given, else from `env.reset`."""
    if pool is None:
        return jax.vmap(env.reset)(jax.random.split(key, num))
    size = jax.tree.leaves(pool.obs)[0].shape[0]
    index = jax.random.randint(key, (num,), 0, size)
    return _fresh_rng(_per_env_map(env, lambda x: x[index], pool), jax.random.fold_in(key, 1))


def _fresh_rng(states, key: chex.PRNGKey):
    """`states` (leaves `[N, ...]`) with `info["rng"]`, where present, replaced by N new keys from `key`: a
    Playground env draws an episode's randomness (velocity commands, pushes) from it, a gymnax env each step's
    (MinAtar's spawns), so a copy of a pool state must not bring the pool state's own."""
    info = getattr(states, "info", None)
    if not isinstance(info, Mapping) or "rng" not in info:
        return states
    return states.replace(info={**info, "rng": jax.random.split(key, info["rng"].shape[0])})


def _finite(stepped):
    """(finite [E], obs, reward) of a batched stepped state, with observation and reward 0 where it is not finite.

    An unstable simulation's NaN passes every `done` check (each comparison with NaN is false); callers end such
    a step's episode. Its stored observation 0 is never bootstrapped from (a terminal step's discount is 0) and
    keeps NaN and inf out of the replay and the observation statistics (where even 0 · NaN would stay NaN)."""
    finite = jnp.isfinite(stepped.reward) & jnp.all(jnp.isfinite(stepped.obs), axis=-1)
    return finite, jnp.where(finite[:, None], stepped.obs, 0.0), jnp.where(finite, stepped.reward, 0.0)


def observation(state: EnvState) -> chex.Array:
    """Current observations `[E, O]` (the first observation of a new episode after a reset)."""
    return state.sim_state.obs


def step(
    env: Any, state: EnvState, action: chex.Array, key: chex.PRNGKey, episode_length: int
) -> tuple[EnvState, StepResult]:
    """Steps every env with `action` `[E, A]` (already inside the action bounds), resetting finished ones. A step
    whose observation or reward is not finite terminates, with observation and reward 0 (`_finite`)."""
    num_envs = state.episode_step.shape[0]
    stepped = jax.vmap(env.step)(state.sim_state, action)
    finite, final_obs, reward = _finite(stepped)
    episode_step = state.episode_step + 1
    terminated = (stepped.done > 0.5) | ~finite
    truncated = jnp.logical_and(episode_step >= episode_length, jnp.logical_not(terminated))
    done = jnp.logical_or(terminated, truncated)
    episode_return = state.episode_return + reward

    def pick(new, old):
        mask = done.reshape(done.shape + (1,) * (old.ndim - 1))
        return jnp.where(mask, new, old)

    fresh = initial_states(env, key, num_envs, state.reset_pool)
    next_sim_state = _per_env_map(env, lambda old, new: pick(new, old), stepped, fresh)
    next_state = EnvState(
        sim_state=next_sim_state,
        episode_step=jnp.where(done, 0, episode_step),
        episode_return=jnp.where(done, 0.0, episode_return),
        reset_pool=state.reset_pool,
    )
    result = StepResult(
        final_obs=final_obs,
        reward=reward,
        terminated=terminated,
        truncated=truncated,
        finished_return=jnp.where(done, episode_return, 0.0),
        nonfinite=~finite,
    )
    return next_state, result


class Episodes(NamedTuple):
    """Outcome of evaluation episodes run in parallel (leading axis E)."""

    returns: chex.Array  # [E] undiscounted return
    lengths: chex.Array  # int32 [E] steps until termination or the time limit
    final_obs: chex.Array  # [E, O] observation at the episode's last step (the terminal one if it terminated)


def evaluate(
    env: Any, policy_fn, key: chex.PRNGKey, num_episodes: int, episode_length: int, pool=None
) -> Episodes:
    """Runs `num_episodes` full episodes in parallel and returns their `Episodes`.

    `policy_fn(obs [E, O], key) -> action [E, A]` must return actions inside the bounds; it gets a fresh key
    every step (a deterministic policy ignores it). Episodes start from `initial_states(env, k, num_episodes,
    pool)` with `k` the first half of `jax.random.split(key)`, and end at termination, at a non-finite step (reward
    and observation 0, as in `step`) or after `episode_length` steps; rewards after the end are ignored.
    """
    start_key, policy_key = jax.random.split(key)
    sim_state = initial_states(env, start_key, num_episodes, pool)

    def body(carry, step_key):
        sim_state, alive, total, length, final_obs = carry
        next_state = jax.vmap(env.step)(sim_state, policy_fn(sim_state.obs, step_key))
        finite, obs, reward = _finite(next_state)
        # Finished episodes keep stepping (lockstep) from their terminal state, where Brax's physics can
        # produce NaN (e.g. a fallen walker2d): select, since 0 * NaN would still poison the return.
        total = total + jnp.where(alive, reward, 0.0)
        length = length + alive.astype(jnp.int32)
        final_obs = jnp.where(alive[:, None], obs, final_obs)
        alive = alive & (next_state.done < 0.5) & finite
        return (next_state, alive, total, length, final_obs), None

    init = (sim_state, jnp.ones((num_episodes,), bool), jnp.zeros((num_episodes,)),
            jnp.zeros((num_episodes,), jnp.int32), sim_state.obs)
    (_, _, total, length, final_obs), _ = jax.lax.scan(
        body, init, jax.random.split(policy_key, episode_length))
    return Episodes(returns=total, lengths=length, final_obs=final_obs)
