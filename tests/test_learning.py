"""End to end: the default configuration really learns inverted_pendulum (a real run, ~2 min on 2 CPU cores)."""

import jax
import numpy as np

from purempo import Config, make_train


def test_default_config_balances_inverted_pendulum():
    config = Config()  # the defaults are the inverted_pendulum preset: 100k env steps
    _, metrics = jax.device_get(jax.jit(make_train(config))(jax.random.PRNGKey(0)))
    returns = metrics["eval_return"]
    learned = metrics["updates"] > 0
    assert np.all(np.isfinite(metrics["critic_loss"][learned]))
    # Deterministic evaluation over 16 episodes of up to 1000 steps: the final policy balances the pole.
    assert returns[-1] >= 900, f"eval returns over the run: {np.round(returns, 1).tolist()}"
    # And it learned (the initial policy falls within a few dozen steps).
    assert returns[0] < returns[-1]
