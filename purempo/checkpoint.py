"""Checkpoints of a run's full `TrainState` with orbax-checkpoint, for exact resumption.

A run directory keeps its checkpoints under `checkpoints/<step>/`, where a step is the number of evaluation
periods completed (0 = the initial state). Each checkpoint holds three orbax items:
- `state`: every non-empty leaf of the `TrainState` except the replay data (params, target params, optimiser
  and dual states, normalisers, env states, reset pool, RNG keys, counters), keyed by position in the flattened
  tree (empty leaves are recreated from the config);
- `replay`: the replay buffer's leaves, present only when replay is checkpointed;
- `meta`: JSON with the wall time reached, purempo's format version and the leaves' shapes and dtypes.
Leaves are stored flat and the tree structure comes from the run's config (`jax.eval_shape` of `init`), so a
checkpoint is checked against the config before any array is read. Orbax writes each step to a temporary
directory and renames it when complete, so a kill mid-save leaves the previous checkpoints intact.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import jax
import numpy as np

from purempo import sharding

FORMAT_VERSION = 2  # 2: the replay stores each observation once (replay.Stored, final_obs)
CHECKPOINT_DIR = "checkpoints"

# Orbax reports routine steps as absl warnings, and a failed write as error logs with tracebacks from its threads
# before raising; the caller reports the exception itself (a full disk as one line, `driver`).
logging.getLogger("absl").setLevel(logging.CRITICAL)


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or does not match the run; the message is one line."""


class Restored(NamedTuple):
    state: Any  # TrainState; its replay is `fresh_replay` when the checkpoint holds none
    step: int  # evaluation periods completed
    meta: Dict[str, Any]
    has_replay: bool


def _ocp():
    import orbax.checkpoint as ocp  # deferred: importing orbax costs about a second

    return ocp


def _manager(run_dir: Path, keep: Optional[int] = None, create: bool = False):
    ocp = _ocp()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False, create=create)
    return ocp.CheckpointManager(Path(run_dir).resolve() / CHECKPOINT_DIR, options=options)


def _split(state) -> Tuple[Any, Any]:
    """(the `TrainState` without its replay data, the replay data): the data is its own orbax item."""
    return state._replace(replay=state.replay._replace(data=None)), state.replay.data


def _leaf_dict(tree) -> Dict[str, Any]:
    """Leaves keyed by position; empty ones are left out (orbax cannot save a zero-size array, and MuJoCo
    Playground's env states have some, e.g. the contacts of a model without any); `_unflatten` recreates them."""
    return {f"{i:05d}": leaf for i, leaf in enumerate(jax.tree.leaves(tree)) if np.prod(leaf.shape) > 0}


def _signature(tree) -> List[List[Any]]:
    return [[list(leaf.shape), str(np.dtype(leaf.dtype))] for leaf in jax.tree.leaves(tree)]


def steps(run_dir: Path) -> List[int]:
    """Steps of the complete checkpoints in `run_dir`, oldest first."""
    if not (Path(run_dir) / CHECKPOINT_DIR).is_dir():
        return []
    return sorted(_manager(run_dir).all_steps())


class Saver:
    """Saves `TrainState`s of one run under `run_dir/checkpoints`, keeping the `keep` newest."""

    def __init__(self, run_dir: Path, keep: int, with_replay: bool):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.with_replay = with_replay
        sharding.wait_for_every_process("checkpoint manager")  # orbax syncs processes with gloo (30 s to meet)
        self._manager = _manager(run_dir, keep=keep, create=True)

    def save(self, step: int, state, meta: Dict[str, Any]) -> None:
        """Synchronous: returns once the `TrainState` is on disk (the caller may then donate it)."""
        ocp = _ocp()
        rest, replay_data = _split(state)
        meta = dict(meta, format_version=FORMAT_VERSION, state_signature=_signature(rest),
                    replay_signature=_signature(replay_data) if self.with_replay else None)
        items = dict(state=ocp.args.StandardSave(_leaf_dict(rest)), meta=ocp.args.JsonSave(meta))
        if self.with_replay:
            items["replay"] = ocp.args.StandardSave(_leaf_dict(replay_data))
        sharding.wait_for_every_process("checkpoint save")
        with _quiet_threads():
            self._manager.save(step, args=ocp.args.Composite(**items), force=True)
            self._manager.wait_until_finished()


class _quiet_threads:
    """While saving, exceptions in orbax's and tensorstore's own threads are not printed: a failed write (a full
    disk) reaches the caller as the save's exception, and their copies (tracebacks from every writer thread,
    "Event loop is closed" from callbacks that come after) would bury its one line."""

    def __enter__(self):
        import sys
        import threading

        self.saved = threading.excepthook, sys.unraisablehook
        threading.excepthook = lambda args: None
        sys.unraisablehook = lambda unraisable: None

    def __exit__(self, *exc):
        import sys
        import threading

        threading.excepthook, sys.unraisablehook = self.saved
        return False


def _check_signature(run_dir, step, what, stored, abstract) -> None:
    expected = _signature(abstract)
    if stored is None or len(stored) != len(expected):
        raise CheckpointError(f"checkpoint {step} in {run_dir} does not match the run's config: its {what} has "
                              f"{0 if stored is None else len(stored)} arrays, the config makes {len(expected)}")
    for index, (got, want) in enumerate(zip(stored, expected)):
        if list(got[0]) != want[0] or got[1] != want[1]:
            raise CheckpointError(
                f"checkpoint {step} in {run_dir} does not match the run's config: {what} array {index} is "
                f"{got[1]}{tuple(got[0])}, the config makes {want[1]}{tuple(want[0])} (other env or sizes?)")


def restore(run_dir: Path, abstract_state, fresh_replay=None, step: Optional[int] = None,
            with_replay: bool = True) -> Restored:
    """The checkpoint `step` (default: the newest) of `run_dir`, as a `TrainState` shaped like `abstract_state`
    (`jax.ShapeDtypeStruct` leaves; their shardings, where set, place the restored arrays).

    `fresh_replay` (an empty `ReplayState`) replaces the replay when the checkpoint has none; with `with_replay`
    False the replay is not read and stays `abstract_state`'s unless `fresh_replay` is given (evaluation needs
    none). Raises `CheckpointError` (one line) when there is no checkpoint, it cannot be read, or its arrays do
    not match `abstract_state`.
    """
    ocp = _ocp()
    run_dir = Path(run_dir)
    available = steps(run_dir)
    if not available:
        raise CheckpointError(f"no checkpoint in {run_dir / CHECKPOINT_DIR}")
    step = available[-1] if step is None else step
    if step not in available:
        raise CheckpointError(f"no checkpoint {step} in {run_dir / CHECKPOINT_DIR}; available: {available}")
    manager = _manager(run_dir)
    rest_abstract, replay_abstract = _split(abstract_state)
    try:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception as error:  # orbax raises many types for damaged files
        raise CheckpointError(f"cannot read checkpoint {step} in {run_dir}: {_first_line(error)}") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {step} in {run_dir} is not a purempo checkpoint of format {FORMAT_VERSION}")
    _check_signature(run_dir, step, "state", meta.get("state_signature"), rest_abstract)
    has_replay = meta.get("replay_signature") is not None
    load_replay = has_replay and with_replay
    if load_replay:
        _check_signature(run_dir, step, "replay", meta["replay_signature"], replay_abstract)

    def restore_args(abstract):
        # Leaves come back with the abstract state's shardings where it has them (a run over several devices).
        return ocp.args.StandardRestore(jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
            _leaf_dict(abstract)))

    items = dict(state=restore_args(rest_abstract))
    if load_replay:
        items["replay"] = restore_args(replay_abstract)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**items))
        state = _unflatten(rest_abstract, restored.state)
        replay_data = _unflatten(replay_abstract, restored.replay) if load_replay else None
    except CheckpointError:
        raise
    except Exception as error:
        raise CheckpointError(f"cannot read checkpoint {step} in {run_dir}: {_first_line(error)}") from None
    if load_replay:
        state = state._replace(replay=state.replay._replace(data=replay_data))
    elif fresh_replay is not None:
        state = state._replace(replay=fresh_replay)
    elif with_replay:
        raise ValueError("the checkpoint holds no replay: pass fresh_replay")
    else:  # evaluation: the replay stays abstract
        state = state._replace(replay=abstract_state.replay)
    return Restored(state=state, step=step, meta=meta, has_replay=has_replay)


def _unflatten(abstract, leaf_dict):
    leaves = [leaf_dict[f"{i:05d}"] if np.prod(want.shape) > 0 else np.zeros(want.shape, want.dtype)
              for i, want in enumerate(jax.tree.leaves(abstract))]
    for leaf, want in zip(leaves, jax.tree.leaves(abstract)):
        if leaf.shape != want.shape or leaf.dtype != want.dtype:  # the stored metadata lied: damaged files
            raise CheckpointError(f"stored array is {leaf.dtype}{leaf.shape}, expected {want.dtype}{want.shape}")
    return jax.tree.unflatten(jax.tree.structure(abstract), leaves)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")
