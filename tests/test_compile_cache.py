"""JAX's persistent compilation cache as `purempo train` uses it (`driver.enable_compile_cache`): executables
stored once are reused by the next process, in purempo's own capped directory or a user's shared one."""

import os
import subprocess
import sys
import textwrap


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


def test_a_second_run_of_the_same_setup_compiles_nothing_and_trains_the_same_bits(tmp_path):
    """`purempo train` twice in fresh processes with purempo's own cache (`$XDG_CACHE_HOME/purempo/xla`): the
    first compiles the run's programs into it, the second loads every one of them (no cache miss) and writes
    the same metrics; `--no-compile-cache` neither reads nor writes it."""
    import json

    from test_cli import TINY_FLAGS

    child = textwrap.dedent("""
        import json, sys
        from jax._src import monitoring
        events = []
        monitoring.register_event_listener(lambda event, **kw: events.append(event))
        from purempo import cli
        code = cli.main(["train", *sys.argv[1:]])
        print(json.dumps(dict(code=code, hits=events.count("/jax/compilation_cache/cache_hits"),
                              misses=events.count("/jax/compilation_cache/cache_misses"))))
    """)
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache-home")

    def train(name, *extra):
        result = subprocess.run([sys.executable, "-c", child, *TINY_FLAGS, "--no-tensorboard", *extra,
                                 "--run-dir", str(tmp_path / name)], env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return json.loads(result.stdout.splitlines()[-1]), [dict(row, wall_time_s=None) for row in rows]

    cache = tmp_path / "cache-home" / "purempo" / "xla"
    uncached, uncached_rows = train("uncached", "--no-compile-cache")
    assert uncached["hits"] == uncached["misses"] == 0 and not cache.exists()
    cold, cold_rows = train("cold")
    warm, warm_rows = train("warm")
    assert cold["misses"] >= 3 and any(cache.iterdir()), cold  # init, the training chunk and the evaluation at least
    assert warm["misses"] == 0 and warm["hits"] >= 3, warm
    assert warm_rows == cold_rows == uncached_rows
