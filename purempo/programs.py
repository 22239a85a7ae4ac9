"""A run's three programs (`init`, `train_chunk`, `evaluate_state`) over the state's leaves, exported with
`jax.export` and kept on disk, so that a second start of the same run neither traces nor imports a simulator.

JAX's persistent compilation cache (`driver.enable_compile_cache`) skips XLA's compilation, but it is keyed by
the lowered module, so finding an entry first takes tracing and lowering. For a Brax or MJX run that costs
seconds, on top of importing Brax. An `Exported` is that lowered module, serialised. Deserialising it takes
milliseconds, and compiling it then hits the persistent cache. Cold and warm starts compile the *same*
deserialised module, so they run the same executable and give the same numbers bit for bit.

The state travels as `jax.tree.leaves` of the `TrainState`, and each leaf has a role
(`checkpoint.leaf_roles`). The driver needs nothing else: it slices seeds and members with `jax.tree.map`,
and checkpoints are written from leaves. Metrics come back as plain dicts of arrays (`eval_episodes` too).

An entry's key covers everything the programs depend on:
- the config, which includes every constant that is traced in;
- the number of runs, and whether hyper-parameters are per run;
- the devices, the backend, the device kind and JAX's tracing flags;
- the versions of the packages that trace the programs, and a hash of purempo's own source.
A changed source file or an upgraded package gives a new key, so a stale entry is never used.

Two kinds of run are traced and compiled every time, with nothing cached:
- runs over several processes (`jax.distributed`);
- programs that `jax.export` cannot serialise. MuJoCo Warp's custom calls carry no compatibility guarantee,
  so `Prepared.not_cached_because` says why and the driver prints it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import jax

from purempo.config import Config

CACHE_FORMAT = 2  # 2: the evaluation's metrics hold its episodes
MAX_CACHE_BYTES = 1 << 30
"""The program cache keeps at most this much: writing an entry removes the least recently used ones beyond it
(a changed source file or package gives new keys, so old entries would otherwise pile up)."""
PROGRAMS = ("init", "train_chunk", "evaluate_state")
PACKAGES = ("jax", "jaxlib", "brax", "mujoco", "mujoco-mjx", "playground", "flax", "optax", "chex", "distrax",
            "numpy", "ml_dtypes")  # what traces the programs, so their versions key the cache


class Programs(NamedTuple):
    """A run's compiled programs over the state's leaves (a list, in `jax.tree.leaves` order)."""

    init: Callable  # (keys [S, 2]) -> leaves
    train_chunk: Callable  # (leaves) -> (leaves, per-iteration metrics [S, I]); donates its input
    evaluate_state: Callable  # (leaves) -> (leaves, evaluation metrics [S]); donates its input
    state_shape: List[jax.ShapeDtypeStruct]  # with their shardings on a mesh
    state_sharding: Optional[List[Any]]  # NamedShardings on the mesh (None without one)
    roles: List[str]  # per leaf: checkpoint.STATE, REPLAY or REPLAY_DATA
    cached: bool  # the exports came from the cache (no tracing)


class _Exports(NamedTuple):
    programs: Dict[str, Any]  # name -> jax.export.Exported
    roles: List[str]
    env_axes: List[int]  # per leaf: the axis split over devices (after the runs' axis), or -1


# ----------------------------------------------------------------------------------------------------------
# The cache key
# ----------------------------------------------------------------------------------------------------------


def _source_hash() -> str:
    digest = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _versions() -> Dict[str, Optional[str]]:
    from importlib import metadata

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {name: version(name) for name in PACKAGES}


def cache_key(config: Config, num_runs: int, hparams_per_run: bool, num_devices: int) -> str:
    """A hex digest of everything the run's programs depend on (see the module docstring)."""
    devices = jax.devices()[:num_devices]
    record = dict(
        format=CACHE_FORMAT, config=dataclasses.asdict(config), num_runs=num_runs, hparams_per_run=hparams_per_run,
        num_devices=num_devices, backend=jax.default_backend(), device_kind=devices[0].device_kind,
        flags={name: str(getattr(jax.config, name)) for name in ("jax_enable_x64", "jax_default_matmul_precision",
                                                                  "jax_threefry_partitionable", "jax_default_prng_impl")},
        versions=_versions(), source=_source_hash(),
    )
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:32]


# ----------------------------------------------------------------------------------------------------------
# Exporting (tracing the trainer) and the cache on disk
# ----------------------------------------------------------------------------------------------------------


def hparams_axis(hparams) -> Optional[int]:
    """The runs' axis of `hparams` for `jax.vmap`: None when they are shared (None, or scalar leaves), 0 when
    they are per run (leaves `[S]`)."""
    return None if hparams is None or jax.numpy.ndim(jax.tree.leaves(hparams)[0]) == 0 else 0


def _hparam_leaves(hparams) -> List[Any]:
    return [] if hparams is None else jax.tree.leaves(hparams)


def _trace(config: Config, keys, hparams, num_devices: int, mesh):
    """The trainer's three programs over leaves, as jitted functions (imports the simulator), their roles,
    env axes and the state's leaf shapes."""
    from purempo import checkpoint, sharding
    from purempo.train import distribute, make_trainer

    try:
        trainer = make_trainer(config, num_devices)
    except ValueError as error:
        raise UnusableConfig(str(error)) from None
    init, train_chunk, evaluate_state, specs = distribute(trainer, mesh, True, hparams_axis(hparams))
    hp_tree = jax.tree.structure(config.hparams)
    unflatten_hp = (lambda leaves: None) if hparams is None else hp_tree.unflatten  # noqa: E731
    shape = jax.eval_shape(init, keys, hparams)
    tree = jax.tree.structure(shape)
    roles = checkpoint.leaf_roles(shape)
    if specs is None:
        env_axes, state_sharding = [-1] * len(roles), None
    else:
        env_axes = [-1 if axis == sharding.SHARED else axis for axis in jax.tree.leaves(trainer.env_axes(shape))]
        state_sharding = jax.tree.leaves(sharding.named(mesh, specs, True))
    leaf_shape = _with_sharding([jax.ShapeDtypeStruct(s.shape, s.dtype) for s in jax.tree.leaves(shape)],
                                state_sharding)

    def metrics(values):  # plain dicts of arrays: loading them back needs none of purempo's types
        if "eval_episodes" in values:
            values = dict(values, eval_episodes=values["eval_episodes"]._asdict())
        return values

    def init_leaves(k, hp):
        return jax.tree.leaves(init(k, unflatten_hp(hp)))

    def chunk_leaves(leaves, hp):
        state, values = train_chunk(tree.unflatten(leaves), unflatten_hp(hp))
        return jax.tree.leaves(state), metrics(values)

    def evaluate_leaves(leaves):
        state, values = evaluate_state(tree.unflatten(leaves))
        return jax.tree.leaves(state), metrics(values)

    functions = dict(init=jax.jit(init_leaves, out_shardings=state_sharding), train_chunk=jax.jit(chunk_leaves),
                     evaluate_state=jax.jit(evaluate_leaves))
    return functions, roles, env_axes, leaf_shape


def _export(functions: Dict[str, Callable], keys, hparams, shapes, roles: List[str], env_axes: List[int]) -> _Exports:
    """Exports the traced programs (raises for what `jax.export` cannot serialise, e.g. MuJoCo Warp's custom
    calls, which have no compatibility guarantee)."""
    from jax import export

    hp_leaves = _hparam_leaves(hparams)
    programs = dict(init=export.export(functions["init"])(keys, hp_leaves),
                    train_chunk=export.export(functions["train_chunk"])(shapes, hp_leaves),
                    evaluate_state=export.export(functions["evaluate_state"])(shapes))
    return _Exports(programs, roles, env_axes)


def _with_sharding(shapes, shardings):
    if shardings is None:
        return shapes
    return [jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh) for s, sh in zip(shapes, shardings)]


def _save(directory: Path, exports: _Exports, blobs: Dict[str, bytes]) -> None:
    """Writes the entry to a temporary directory and renames it: a reader sees all of it or nothing."""
    temporary = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    for name, blob in blobs.items():
        (temporary / f"{name}.jaxexport").write_bytes(blob)
    (temporary / "meta.json").write_text(json.dumps(dict(format=CACHE_FORMAT, roles=exports.roles,
                                                         env_axes=exports.env_axes)))
    shutil.rmtree(directory, ignore_errors=True)  # a damaged entry of the same key
    try:
        os.replace(temporary, directory)
    except OSError:  # another process wrote the same entry first
        shutil.rmtree(temporary, ignore_errors=True)


def _size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def prune(cache_dir: Path, max_bytes: int = MAX_CACHE_BYTES, keep: Optional[Path] = None) -> List[Path]:
    """Removes the least recently used entries of `cache_dir` (by their meta.json's mtime, which a load
    refreshes) until the rest take at most `max_bytes`; never `keep`. Returns the entries removed."""
    entries = sorted((path for path in Path(cache_dir).iterdir() if (path / "meta.json").is_file()),
                     key=lambda path: (path / "meta.json").stat().st_mtime_ns, reverse=True)
    total, removed = 0, []
    for entry in entries:  # newest first: what is kept is the most recently used
        size = _size(entry)
        if total + size > max_bytes and entry != keep:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        else:
            total += size
    return removed


def _load(directory: Path) -> Optional[_Exports]:
    """The entry in `directory`, or None when there is none or it cannot be read (it is then re-exported)."""
    from jax import export

    if not (directory / "meta.json").is_file():
        return None
    try:
        meta = json.loads((directory / "meta.json").read_text())
        if meta.get("format") != CACHE_FORMAT:
            return None
        programs = {name: export.deserialize(bytearray((directory / f"{name}.jaxexport").read_bytes()))
                    for name in PROGRAMS}
        try:
            os.utime(directory / "meta.json")  # recently used: the last to be pruned
        except OSError:  # a read-only cache is still usable
            pass
        return _Exports(programs, list(meta["roles"]), [int(a) for a in meta["env_axes"]])
    except Exception:  # a damaged entry (truncated file, other format): export again
        return None


# ----------------------------------------------------------------------------------------------------------
# Compiling
# ----------------------------------------------------------------------------------------------------------


def _shardings(env_axes: List[int], mesh) -> Optional[List[Any]]:
    if mesh is None or mesh.size == 1:
        return None
    from jax.sharding import NamedSharding, PartitionSpec as P

    from purempo import sharding

    return [NamedSharding(mesh, P() if axis < 0 else P(*([None] * (axis + 1) + [sharding.AXIS])))
            for axis in env_axes]


def compile_three(init, train_chunk, evaluate_state, keys, hparams, state_shape, state_sharding):
    """`init(keys, hparams)`, `train_chunk(state, hparams)` and `evaluate_state(state)` compiled at once on three
    threads (XLA releases the GIL while compiling), the chunks donating their state; returns them with
    `hparams` bound: `(init(keys), train_chunk(state), evaluate_state(state))`."""
    lowered = (
        jax.jit(init, out_shardings=state_sharding).lower(keys, hparams),
        jax.jit(train_chunk, donate_argnums=0).lower(state_shape, hparams),
        jax.jit(evaluate_state, donate_argnums=0).lower(state_shape),
    )
    with ThreadPoolExecutor(len(lowered)) as pool:
        init_c, chunk_c, eval_c = pool.map(lambda program: program.compile(), lowered)
    return (lambda k: init_c(k, hparams)), (lambda state: chunk_c(state, hparams)), eval_c


def _compile(functions: Dict[str, Callable], shapes, roles: List[str], env_axes: List[int], keys, hparams, mesh,
             cached: bool) -> Programs:
    """The compiled `Programs` of `functions` (`compile_three`)."""
    state_sharding = _shardings(env_axes, mesh)
    leaf_shape = _with_sharding([jax.ShapeDtypeStruct(a.shape, a.dtype) for a in shapes], state_sharding)
    init, train_chunk, evaluate_state = compile_three(functions["init"], functions["train_chunk"],
                                                      functions["evaluate_state"], keys, _hparam_leaves(hparams),
                                                      leaf_shape, state_sharding)
    return Programs(
        init=init,
        train_chunk=train_chunk,
        evaluate_state=evaluate_state,
        state_shape=leaf_shape,
        state_sharding=state_sharding,
        roles=roles,
        cached=cached,
    )


class Prepared(NamedTuple):
    """The programs before compiling: enough to check a checkpoint against the run's state."""

    functions: Dict[str, Callable]  # name -> the jitted function or the deserialised export's `call`
    shapes: List[Any]  # the state's leaf shapes, all runs (their shardings, where present, are not used)
    roles: List[str]
    env_axes: List[int]
    cached: bool
    not_cached_because: Optional[str] = None  # why a cache was asked for and not used


class UnusableConfig(ValueError):
    """The trainer cannot be built from the config (e.g. an unknown env); the message is one line."""


def prepare(config: Config, keys, hparams=None, num_devices: int = 1, mesh=None,
            cache_dir: Optional[Path] = None) -> Prepared:
    """Loads the programs of `config` from `cache_dir` when it holds an entry of their key (no tracing, no
    simulator import), else traces and exports them (and stores them there). Without `cache_dir`, or with
    several processes, they are traced each time. Arguments as `build`'s."""
    mesh = mesh if num_devices > 1 else None
    if jax.process_count() > 1:  # a global mesh over several processes: traced and compiled as it is
        functions, roles, env_axes, shapes = _trace(config, keys, hparams, num_devices, mesh)
        return Prepared(functions, shapes, roles, env_axes, cached=False)
    directory = exports = reason = None
    if cache_dir is not None:
        directory = Path(cache_dir) / cache_key(config, int(keys.shape[0]), hparams_axis(hparams) == 0, num_devices)
        exports = _load(directory)
    cached = exports is not None
    if not cached:
        functions, roles, env_axes, shapes = _trace(config, keys, hparams, num_devices, mesh)
        try:
            exports = _export(functions, keys, hparams, shapes, roles, env_axes)
            blobs = {name: program.serialize() for name, program in exports.programs.items()}
        except Exception as error:  # not exportable: the traced programs run as they are, uncached
            reason = " ".join(str(error).split())[:200]
            return Prepared(functions, shapes, roles, env_axes, cached=False,
                            not_cached_because=None if directory is None else f"not exportable ({reason})")
        if directory is not None:
            try:
                _save(directory, exports, blobs)
                prune(directory.parent, keep=directory)
            except OSError as error:  # an unwritable cache costs the next start its tracing, nothing else
                reason = f"cannot write {directory}: {error.strerror or error}"
    functions = {name: program.call for name, program in exports.programs.items()}
    shapes = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in exports.programs["train_chunk"].in_avals[:len(exports.roles)]]
    return Prepared(functions, shapes, exports.roles, exports.env_axes, cached, reason)


def compile(prepared: Prepared, keys, hparams=None, mesh=None) -> Programs:  # noqa: A001 (the step's name)
    """Compiles prepared programs for `keys` and `hparams` (the ones given to `prepare`)."""
    mesh = mesh if mesh is not None and mesh.size > 1 else None
    return _compile(prepared.functions, prepared.shapes, prepared.roles, prepared.env_axes, keys, hparams, mesh,
                    prepared.cached)


def build(config: Config, keys, hparams=None, num_devices: int = 1, mesh=None,
          cache_dir: Optional[Path] = None) -> Programs:
    """The compiled programs of `config` for runs `keys` (`[S, 2]`), vmapped over them, with `hparams` shared
    (None: the config's) or per run (leaves `[S]`), split over `mesh` when `num_devices` > 1; from
    `cache_dir`'s entry when it has one (`prepare`). Cold or warm, the programs compiled are the exported
    modules, so results do not depend on the cache."""
    return compile(prepare(config, keys, hparams, num_devices, mesh, cache_dir), keys, hparams, mesh)
