"""Acting: a lockstep rollout records aligned transitions and the behaviour policy's log densities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from purempo import Config, acting, envs, normalizer
from purempo.train import make_networks

NUM_ENVS = 6
EPISODE_LENGTH = 4
UNROLL = 12
CONFIG = Config(env="inverted_pendulum", policy_hidden=(8,), critic_hidden=(8,), init_std=0.4)


@pytest.fixture(scope="module")
def setup():
    env = envs.make(CONFIG.env)
    policy = make_networks(CONFIG, env.action_size).policy
    obs_dim = envs.observation_size(env)
    params = policy.init(jax.random.PRNGKey(0), jnp.zeros((obs_dim,)))
    # A mean action around +0.4 topples the pole within the time limit for some envs (termination) and not
    # for others (truncation at EPISODE_LENGTH steps).
    head = params["params"]["Dense_0"]
    params = {"params": {**params["params"], "Dense_0": {**head, "bias": jnp.full_like(head["bias"], 0.4)}}}
    rng = np.random.default_rng(1)
    obs_stats = normalizer.RunningStats(
        count=jnp.float32(50.0),
        mean=jnp.asarray(rng.normal(0.0, 0.01, obs_dim), jnp.float32),
        sum_sq_dev=jnp.asarray(rng.uniform(0.001, 0.05, obs_dim), jnp.float32),
    )

    @jax.jit
    def run(env_state, key, reward_scale):
        return acting.rollout(env, policy, params, obs_stats, env_state, key, UNROLL, EPISODE_LENGTH,
                              reward_scale)[:3]

    env_state = envs.reset(env, jax.random.PRNGKey(2), NUM_ENVS, 16)
    key = jax.random.PRNGKey(3)
    final_state, transitions, episodes = jax.device_get(run(env_state, key, 1.0))
    scaled = jax.device_get(run(env_state, key, 3.0))
    return dict(env=env, policy=policy, params=params, obs_stats=obs_stats, transitions=transitions,
                episodes=episodes, final_state=final_state, scaled=scaled)


def test_shapes_and_both_kinds_of_episode_end_occur(setup):
    tr = setup["transitions"]
    obs_dim = setup["obs_stats"].mean.shape[0]
    assert tr.obs.shape == tr.next_obs.shape == (UNROLL, NUM_ENVS, obs_dim)
    assert tr.action.shape == (UNROLL, NUM_ENVS, setup["env"].action_size)
    for name in ("reward", "terminated", "truncated", "behaviour_log_prob"):
        assert getattr(tr, name).shape == (UNROLL, NUM_ENVS), name
    assert tr.terminated.dtype == bool and tr.truncated.dtype == bool
    assert tr.terminated.any() and tr.truncated.any()  # the test below exercises both
    assert not np.any(tr.terminated & tr.truncated)
    assert np.any(np.abs(tr.action) > 1.0)  # stored unclipped (the env got the clipped action)


def test_next_obs_is_the_following_obs_unless_the_episode_ended(setup):
    """obs[t+1] == next_obs[t] for every env and step, except where the episode ended at t (terminated or
    truncated), where obs[t+1] is a fresh start instead of the final observation."""
    tr = setup["transitions"]
    ended = tr.terminated | tr.truncated  # [U, E]
    continuing = ~ended[:-1]
    np.testing.assert_array_equal(tr.obs[1:][continuing], tr.next_obs[:-1][continuing])
    restarted = ended[:-1]
    assert restarted.sum() >= NUM_ENVS
    assert np.all(np.abs(tr.obs[1:][restarted] - tr.next_obs[:-1][restarted]).max(-1) > 0)
    # The unroll's last next_obs continues into the returned env state the same way.
    last_obs = np.asarray(envs.observation(setup["final_state"]))
    np.testing.assert_array_equal(last_obs[~ended[-1]], tr.next_obs[-1][~ended[-1]])


def test_episode_ends_follow_an_independent_step_counter(setup):
    """truncated exactly when an env's own step count reaches EPISODE_LENGTH without a termination."""
    tr = setup["transitions"]
    count = np.zeros(NUM_ENVS, int)
    for t in range(UNROLL):
        count += 1
        np.testing.assert_array_equal(tr.truncated[t], (count == EPISODE_LENGTH) & ~tr.terminated[t])
        count = np.where(tr.terminated[t] | tr.truncated[t], 0, count)


def test_behaviour_log_prob_is_the_acting_policys_log_density(setup):
    """behaviour_log_prob = Σ_a log N(action | mean, std) of the policy at the acting-time statistics,
    normalised in numpy and evaluated with scipy."""
    tr, obs_stats = setup["transitions"], setup["obs_stats"]
    count, mean, sum_sq_dev = (np.asarray(x, np.float64) for x in obs_stats)
    std = np.sqrt(np.maximum(sum_sq_dev / count, 1e-6))
    normalized = np.clip((tr.obs.astype(np.float64) - mean) / std, -10.0, 10.0).astype(np.float32)
    pi_mean, pi_std = jax.device_get(setup["policy"].apply(setup["params"], normalized))
    expected = stats.norm.logpdf(tr.action.astype(np.float64), pi_mean, pi_std).sum(-1)
    np.testing.assert_allclose(tr.behaviour_log_prob, expected, rtol=1e-4, atol=1e-4)
    # The samples are spread like the policy: standardised actions have unit scale.
    z = (tr.action - pi_mean) / pi_std
    assert 0.5 < z.std() < 1.5 and abs(z.mean()) < 0.5


def test_reward_scale_multiplies_stored_rewards_only(setup):
    """The same key with reward_scale 3 gives the same trajectory, rewards ×3, and unscaled episode stats."""
    tr, episodes = setup["transitions"], setup["episodes"]
    _, scaled_tr, scaled_episodes = setup["scaled"]
    np.testing.assert_array_equal(scaled_tr.obs, tr.obs)
    np.testing.assert_array_equal(scaled_tr.action, tr.action)
    np.testing.assert_allclose(scaled_tr.reward, 3.0 * tr.reward, rtol=1e-6)
    np.testing.assert_array_equal(scaled_episodes.return_sum, episodes.return_sum)
    ended = tr.terminated | tr.truncated
    assert episodes.count == ended.sum()


def test_episode_stats_sum_the_rewards_of_finished_episodes(setup):
    """return_sum is the sum, over episodes that ended in the unroll, of their rewards (all envs start fresh)."""
    tr, episodes = setup["transitions"], setup["episodes"]
    running, total = np.zeros(NUM_ENVS), 0.0
    for t in range(UNROLL):
        running += tr.reward[t]
        ended = tr.terminated[t] | tr.truncated[t]
        total += running[ended].sum()
        running[ended] = 0.0
    np.testing.assert_allclose(episodes.return_sum, total, rtol=1e-6)


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_correlated_noise_is_stationary_unit_variance_with_geometric_autocorrelation(rho):
    """20,000 parallel chains started from N(0, 1), 30 steps: every step has variance 1 (± 0.05), and the
    correlation between steps t and t − k is ρ^k (± 0.03), as for an AR(1) process; ρ = 0 is white noise."""
    step = jax.jit(acting.correlated_noise)
    noise = [jax.random.normal(jax.random.PRNGKey(0), (20_000, 1))]
    for key in jax.random.split(jax.random.PRNGKey(1), 30):
        noise.append(step(noise[-1], key, rho))
    n = np.asarray(jnp.stack(noise))[..., 0].astype(np.float64)  # [31, chains]
    np.testing.assert_allclose(n.var(axis=1), 1.0, atol=0.05)
    for k in (1, 2, 3):
        np.testing.assert_allclose(np.mean(n[k:] * n[:-k]), rho**k, atol=0.03)


def test_rollout_noise_persists_within_an_episode_restarts_after_it_and_is_returned(setup):
    """ρ = 0.95 in a 64-env rollout: the standardised actions n_t = (a_t − mean)/std correlate by ≈ ρ with the
    previous step's inside an episode and by ≈ 0 across an episode end; the returned noise is the last step's
    n for envs still running; the behaviour log-prob is still log π_θ(a|s) at the acting-time statistics."""
    env, policy, params, obs_stats = setup["env"], setup["policy"], setup["params"], setup["obs_stats"]
    num_envs, rho = 64, 0.95
    env_state = envs.reset(env, jax.random.PRNGKey(4), num_envs, 16)
    start = jax.random.normal(jax.random.PRNGKey(6), (num_envs, env.action_size))
    _, tr, _, noise = jax.device_get(jax.jit(
        lambda s, k, n: acting.rollout(env, policy, params, obs_stats, s, k, UNROLL, EPISODE_LENGTH, 1.0, n, rho)
    )(env_state, jax.random.PRNGKey(5), start))
    pi_mean, pi_std = jax.device_get(policy.apply(params, normalizer.normalize(obs_stats, jnp.asarray(tr.obs))))
    n = ((tr.action - pi_mean) / pi_std)[..., 0].astype(np.float64)  # [U, E]
    ended = (tr.terminated | tr.truncated)[:-1]
    same_episode = n[1:][~ended] * n[:-1][~ended]
    new_episode = n[1:][ended] * n[:-1][ended]
    assert same_episode.size > 200 and new_episode.size > 100
    np.testing.assert_allclose(same_episode.mean(), rho, atol=0.12)
    assert abs(new_episode.mean()) < 0.25
    np.testing.assert_allclose(n[0], rho * np.asarray(start)[:, 0], atol=4 * np.sqrt(1 - rho**2))
    running = ~(tr.terminated[-1] | tr.truncated[-1])
    np.testing.assert_allclose(np.asarray(noise)[running, 0], n[-1][running], rtol=1e-4, atol=1e-4)
    expected = stats.norm.logpdf(tr.action.astype(np.float64), pi_mean, pi_std).sum(-1)
    np.testing.assert_allclose(tr.behaviour_log_prob, expected, rtol=1e-4, atol=1e-4)


def test_staggered_starts_count_only_whole_episodes(setup):
    """With staggered counters (`envs.reset(..., stagger=T)`), a naive walk over the transitions (a step ends an
    episode where it terminated or truncated; the first episode of an env whose counter started above 0 is not a
    whole one) gives the rollout's episode count and return sum; counters start spread over [0, T)."""
    env, policy, params, obs_stats = setup["env"], setup["policy"], setup["params"], setup["obs_stats"]
    env_state = envs.reset(env, jax.random.PRNGKey(7), 32, 16, stagger=EPISODE_LENGTH)
    offsets = np.asarray(env_state.episode_step)
    assert offsets.min() >= 0 and offsets.max() < EPISODE_LENGTH and len(set(offsets.tolist())) == EPISODE_LENGTH
    _, tr, episodes, _ = jax.device_get(jax.jit(
        lambda s, k: acting.rollout(env, policy, params, obs_stats, s, k, UNROLL, EPISODE_LENGTH))(
            env_state, jax.random.PRNGKey(8)))
    count, total = 0, 0.0
    for e in range(32):
        partial, ret, steps = offsets[e] > 0, 0.0, offsets[e]
        for t in range(UNROLL):
            ret, steps = ret + float(tr.reward[t, e]), steps + 1
            assert bool(tr.truncated[t, e]) == (steps >= EPISODE_LENGTH and not tr.terminated[t, e])
            if tr.terminated[t, e] or tr.truncated[t, e]:
                if not partial:
                    count, total = count + 1, total + ret
                partial, ret, steps = False, 0.0, 0
    assert count > 0 and float(episodes.count) == count
    np.testing.assert_allclose(float(episodes.return_sum), total, rtol=1e-6)
