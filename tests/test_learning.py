"""End to end: the default configuration learns inverted_pendulum and stays solved (real runs, 2 seeds)."""

import jax
import jax.numpy as jnp
import numpy as np

from conftest import FULL_OPTIMISATION  # XLA's defaults: conftest.py turns them off for the tiny configs
from purempo import Config, make_train


def test_default_config_solves_inverted_pendulum_and_stays_solved():
    # The short version of `benchmarks/stability.py` (5 seeds x 500k steps there): two seeds of the default
    # preset in one vmapped program, 150k env steps, 15 evaluations of 16 mean-action episodes from fresh
    # resets. Every seed must reach 950 and, from 50k steps on, never evaluate below it. On this CPU, with the
    # current defaults (proportional KL multipliers, discount 0.999), four of the five seeds of the stability
    # run never fell below 950 after first reaching it, and the fifth dipped once, at 136k steps (docs/journal.md
    # §6). With discount 0.995 instead, seed 1 fell at 97k (to 228 in the stability run, to 301 here) and this
    # test failed, so it tells the two settings apart. A different CPU can round differently and follow another trajectory.
    # Compiled with FULL_OPTIMISATION: the time goes to running, and the trajectory is the one users' compile follows.
    config = Config(total_steps=150_000, num_evals=15)
    keys = jnp.stack([jax.random.PRNGKey(0), jax.random.PRNGKey(1)])
    _, metrics = jax.device_get(jax.jit(jax.vmap(make_train(config)), compiler_options=FULL_OPTIMISATION)(keys))
    returns = metrics["eval_return"]  # [2, 15]
    late = metrics["eval_env_steps"][0] >= 50_000
    learned = metrics["updates"] > 0
    assert np.all(np.isfinite(metrics["critic_loss"][learned]))
    for seed_returns in returns:
        curve = np.round(seed_returns, 1).tolist()
        assert seed_returns[0] < 200, f"the initial policy already balances? {curve}"
        assert np.any(seed_returns >= 950), f"never reached 950: {curve}"
        assert np.all(seed_returns[late] >= 950), f"fell below 950 after 50k steps: {curve}"
