"""The cache of exported programs (`purempo.programs`): a warm build traces nothing and imports no simulator,
and cold and warm builds compute the same bits as a plain `jax.jit` of the trainer's own pieces."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from purempo import Config, checkpoint, programs
from purempo.train import make_trainer, state_structure

TINY = Config(env="inverted_pendulum", episode_length=50, total_steps=2_000, num_envs=8, unroll_length=2,
              updates_per_iteration=2, prefill_steps=32, num_evals=2, eval_episodes=2, replay_size=2_048,
              batch_size=8, sequence_length=4, num_action_samples=4, policy_hidden=(16, 16),
              critic_hidden=(16, 16))
KEYS = jax.random.split(jax.random.PRNGKey(3), 2)


def run(compiled, chunks=2):
    """The state's leaves and the metrics after `chunks` periods of training and evaluation."""
    state, rows = compiled.init(KEYS), []
    for _ in range(chunks):
        state, metrics = compiled.train_chunk(state)
        state, evaluation = compiled.evaluate_state(state)
        episodes = evaluation["eval_episodes"]  # the trainer's are envs.Episodes, the programs' a dict
        evaluation = dict(evaluation, eval_episodes=dict(getattr(episodes, "_asdict", lambda: episodes)()))
        rows.append(jax.device_get({**metrics, **evaluation}))
    return [np.asarray(x) for x in jax.tree.leaves(state)], rows


def assert_same(a, b):
    leaves_a, rows_a = a
    leaves_b, rows_b = b
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(x, y)
    for row_a, row_b in zip(rows_a, rows_b):
        assert row_a.keys() == row_b.keys()
        for name in row_a:
            jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y, err_msg=name), row_a[name], row_b[name])


@pytest.fixture(scope="module")
def cold(tmp_path_factory):
    cache = tmp_path_factory.mktemp("programs")
    built = programs.build(TINY, KEYS, cache_dir=cache)
    return cache, built, run(built)


class Jitted:
    """The trainer's pieces, vmapped and jitted as they are: the reference the exported programs must match."""

    def __init__(self, config):
        trainer = make_trainer(config)
        self.init = jax.jit(jax.vmap(trainer.init))
        self.train_chunk = jax.jit(jax.vmap(trainer.train_chunk))
        self.evaluate_state = jax.jit(jax.vmap(trainer.evaluate_state))


def test_cold_and_warm_builds_compute_the_trainers_bits(cold):
    cache, built, cold_result = cold
    assert not built.cached and len(list(cache.iterdir())) == 1
    warm = programs.build(TINY, KEYS, cache_dir=cache)
    assert warm.cached
    assert_same(cold_result, run(warm))
    # The leaves are those of the library's TrainState, in jax.tree.leaves order.
    assert_same(cold_result, run(Jitted(TINY)))


def test_state_structure_unflattens_the_programs_leaves(cold):
    _, built, _ = cold
    state = state_structure(TINY).unflatten(built.init(KEYS))
    reference = jax.eval_shape(jax.vmap(make_trainer(TINY).init), KEYS)
    assert jax.tree.structure(state) == jax.tree.structure(reference)
    assert jax.tree.map(lambda x: x.shape, state) == jax.tree.map(lambda x: x.shape, reference)
    assert state.exploration_noise.shape == (len(KEYS), TINY.num_envs, 1)  # inverted_pendulum: one action
    np.testing.assert_array_equal(state.iteration, [0, 0])


def test_roles_mark_exactly_the_replay_and_its_data(cold):
    _, built, _ = cold
    shape = jax.eval_shape(jax.vmap(make_trainer(TINY).init), KEYS)
    data = {id(x) for x in jax.tree.leaves(shape.replay.data)}
    replay = {id(x) for x in jax.tree.leaves(shape.replay)}
    expected = [checkpoint.REPLAY_DATA if id(x) in data else checkpoint.REPLAY if id(x) in replay else checkpoint.STATE
                for x in jax.tree.leaves(shape)]
    assert built.roles == expected
    assert [(s.shape, s.dtype) for s in built.state_shape] == [(s.shape, s.dtype) for s in jax.tree.leaves(shape)]


def test_a_warm_start_in_a_new_process_traces_nothing_and_imports_no_simulator(cold, tmp_path):
    cache, _, cold_result = cold
    out = tmp_path / "leaves.npz"
    child = textwrap.dedent(f"""
        import sys, jax, numpy as np
        from purempo import programs
        from purempo.config import Config
        config = Config(**{dataclasses.asdict(TINY)!r})
        keys = jax.random.split(jax.random.PRNGKey(3), 2)
        built = programs.build(config, keys, cache_dir={str(cache)!r})
        state = built.init(keys)
        for _ in range(2):
            state, _ = built.train_chunk(state)
            state, _ = built.evaluate_state(state)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("brax", "mujoco", "mujoco_playground", "flax", "distrax")
                        or m in ("purempo.train", "purempo.envs"))
        np.savez({str(out)!r}, *[np.asarray(x) for x in state])
        print("cached", built.cached, "loaded", loaded)
    """)
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cached True loaded []" in result.stdout, result.stdout
    stored = np.load(out)
    for index, leaf in enumerate(cold_result[0]):
        np.testing.assert_array_equal(stored[f"arr_{index}"], leaf)


def test_a_damaged_entry_is_exported_again(cold):
    cache, _, cold_result = cold
    (entry,) = cache.iterdir()
    path = entry / "train_chunk.jaxexport"
    path.write_bytes(path.read_bytes()[:100])
    rebuilt = programs.build(TINY, KEYS, cache_dir=cache)
    assert not rebuilt.cached
    assert_same(cold_result, run(rebuilt))
    assert programs.build(TINY, KEYS, cache_dir=cache).cached  # the entry was written anew


def test_the_key_changes_with_anything_the_programs_depend_on():
    key = programs.cache_key(TINY, 2, False, 1)
    assert programs.cache_key(Config(**vars(TINY)), 2, False, 1) == key
    assert len({key, programs.cache_key(TINY.replace(critic_lr=1e-3), 2, False, 1),
                programs.cache_key(TINY.replace(policy_hidden=(8, 8)), 2, False, 1), programs.cache_key(TINY, 3, False, 1),
                programs.cache_key(TINY, 2, True, 1)}) == 5


def test_the_key_changes_when_purempo_source_changes(monkeypatch):
    key = programs.cache_key(TINY, 2, False, 1)
    monkeypatch.setattr(programs, "_source_hash", lambda: "edited")
    assert programs.cache_key(TINY, 2, False, 1) != key


def test_the_driver_trains_the_same_run_from_a_cold_and_a_warm_program_cache(tmp_path):
    from purempo import driver

    cache, rows, written, used = tmp_path / "programs", [], [], []
    for name in ("cold", "warm"):
        driver.train(TINY, tmp_path / name, driver.Options(num_seeds=2, tensorboard=False), program_cache=cache)
        written.append([p.stat().st_mtime_ns for p in sorted(cache.glob("*/*.jaxexport"))])
        used.append([p.stat().st_mtime_ns for p in cache.glob("*/meta.json")])
        rows.append([{k: v for k, v in json.loads(line).items() if k != "wall_time_s"}
                     for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()])
    assert len(list(cache.iterdir())) == 1 and written[0] == written[1]  # the second run read the first's entry
    assert used[1][0] > used[0][0]  # and marked it recently used (for pruning)
    assert len(rows[0]) == TINY.num_evals and rows[0] == rows[1]


def test_programs_that_cannot_be_exported_run_traced_and_say_why(cold, tmp_path, monkeypatch):
    # MuJoCo Warp's custom calls are such programs: jax.export refuses to serialise them. (The traced
    # programs compiled in full are what runs over several processes: tests/test_sharding.py.)
    _, built, _ = cold

    def refuse(*args):
        raise ValueError("Cannot serialize code with custom calls whose targets have no compatibility guarantees")

    monkeypatch.setattr(programs, "_export", refuse)
    prepared = programs.prepare(TINY, KEYS, cache_dir=tmp_path / "programs")
    assert not prepared.cached and prepared.not_cached_because.startswith("not exportable (Cannot serialize")
    assert not (tmp_path / "programs").exists()
    assert [(s.shape, s.dtype) for s in prepared.shapes] == [(s.shape, s.dtype) for s in built.state_shape]
    assert prepared.roles == built.roles
    for traced, exported in zip(jax.jit(prepared.functions["init"])(KEYS, []), built.init(KEYS)):
        np.testing.assert_array_equal(traced, exported)


def test_prune_removes_the_least_recently_used_entries_beyond_the_limit(tmp_path):
    """Entries of 100 bytes, last used in the order b, c, a: a 250-byte cap keeps the two most recently used;
    `keep` (the entry just written) is never removed."""
    import os

    def entry(name, used_ns):
        directory = tmp_path / name
        directory.mkdir()
        (directory / "train_chunk.jaxexport").write_bytes(b"x" * 98)
        (directory / "meta.json").write_text("{}")
        os.utime(directory / "meta.json", ns=(used_ns, used_ns))
        return directory

    a, b, c = entry("a", 4_000_000_000), entry("b", 2_000_000_000), entry("c", 3_000_000_000)
    (tmp_path / "c.tmp-123").mkdir()  # a writer's temporary directory is not an entry
    assert programs.prune(tmp_path, max_bytes=250) == [b]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c", "c.tmp-123"]
    assert programs.prune(tmp_path, max_bytes=100, keep=c) == []  # c alone would go: it is kept
    assert programs.prune(tmp_path, max_bytes=100) == [c]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c.tmp-123"]


def test_a_shared_jax_cache_directory_stays_uncapped_so_entries_of_other_jax_programs_do_not_stop_writes(tmp_path):
    """A capped JAX cache fails every write in a directory holding an uncapped writer's entries (it looks for
    their access-time files). `$JAX_COMPILATION_CACHE_DIR` is such a directory: a plain JAX program fills it,
    then `enable_compile_cache` stores a new executable there without a warning, and a third process loads it."""
    directory = tmp_path / "shared"
    plain = textwrap.dedent(f"""
        import jax, jax.numpy as jnp
        jax.config.update("jax_compilation_cache_dir", {str(directory)!r})
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.jit(lambda x: jnp.cos(x) - 2.0)(jnp.ones(4)).block_until_ready()
    """)
    ours = textwrap.dedent("""
        import jax, jax.numpy as jnp
        from jax._src import monitoring
        from purempo import driver
        hits = []
        monitoring.register_event_listener(lambda event, **kw: hits.append(event))
        driver.enable_compile_cache()
        x = jnp.ones(6)
        hits.clear()  # only the program below counts
        jax.jit(lambda x: jnp.tanh(x) * 5.0)(x).block_until_ready()
        print("hit" if "/jax/compilation_cache/cache_hits" in hits else "miss")
    """)
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(directory), JAX_PLATFORMS="cpu")
    run = lambda code: subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], env=env,  # noqa: E731
                                      capture_output=True, text=True, check=True).stdout.split()
    run(plain)
    before = {p.name for p in directory.iterdir()}
    assert before and not any(name.endswith("-atime") for name in before)  # an uncapped writer's entries
    assert run(ours)[-1] == "miss" and len(list(directory.iterdir())) > len(before)
    assert run(ours)[-1] == "hit"


def test_the_capped_persistent_cache_stores_and_reuses_executables(tmp_path):
    """`driver.enable_compile_cache` caps JAX's cache, which then needs `filelock`: without it JAX only warns
    and caches nothing, and every warm start compiles again. A fresh process compiles a program into the
    cache; a second one loads it from there instead of compiling."""
    script = textwrap.dedent(f"""
        import jax, jax.numpy as jnp
        from jax._src import monitoring
        from purempo import driver
        hits = []
        monitoring.register_event_listener(lambda event, **kw: hits.append(event))
        assert driver.enable_compile_cache({str(tmp_path / "xla")!r}) is not None
        jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.ones(5)).block_until_ready()
        print("hit" if "/jax/compilation_cache/cache_hits" in hits else "miss")
    """)
    run = lambda: subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", script], capture_output=True,  # noqa: E731
                                 text=True, check=True).stdout.split()[-1]
    assert run() == "miss" and any((tmp_path / "xla").iterdir())
    assert run() == "hit"
