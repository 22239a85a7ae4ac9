"""Where the last points of a DM Control task go: purempo's final policy and Brax SAC's, side by side.

Two steps, each its own sub-command:

  python benchmarks/final_policies.py train-sac --env WalkerWalk --steps 1000000 --out runs/sac_WalkerWalk
      Brax SAC with Playground's published settings (as in compare.py) for --steps env steps; saves its final
      parameters (`params.pkl`) and its evaluation curve (`curve.json`) to --out.
  python benchmarks/final_policies.py compare --env WalkerWalk --purempo-run RUN_DIR --sac OUT --name NAME
      Loads purempo's newest checkpoint from RUN_DIR (`purempo train`) and SAC's parameters, then, on the same
      --episodes starts (fresh `env.reset` draws):
      1. returns, reward per step in the first --start-steps steps and after them, and the task's reward terms
         (`reward/*` of Playground's metrics, per-step means) of each policy's deterministic action, of
         purempo's sampled actions, and of SAC's deterministic action plus Gaussian noise with purempo's own std
         at each state: the two gaits under the same noise;
      2. purempo's critic against what it estimates: Q_φ(s_t, a_t) on purempo's sampled-action episodes next to
         the Monte-Carlo discounted return from (s_t, a_t), for t < --horizon (the tail beyond the episode's end
         is at most γ^(1000−t)/(1−γ) · max reward: reported), over all of them and per phase;
      3. whether that critic prefers SAC's action: Q_φ(s, a_SAC(s)) − Q_φ(s, μ_θ(s)) at the states of both
         deterministic gaits, overall and per phase.
      Writes benchmarks/results/final_policies_NAME.json (and prints a table).

Why: at 1M env steps purempo's WalkerWalk ends at ~955–965 and SAC's at ~965–980 (docs/journal.md §7). (1) says
which reward term holds the gap and whether it is the width of purempo's policy (SAC's gait under purempo's
noise); (2) and (3) say whether purempo's critic is wrong about its own policy, or right about it and blind to
SAC's better gait, or sees it and the policy does not follow.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import brax_compat  # noqa: E402
import compare  # noqa: E402
from common import RESULTS, command_line, machine, today, versions  # noqa: E402

from purempo import acting, envs, losses, normalizer, plotting  # noqa: E402
from purempo.cli import UsageError, restore_run  # noqa: E402
from purempo.train import make_networks  # noqa: E402


# ----------------------------------------------------------------------------------------------------------
# Brax SAC: train with Playground's settings, save, rebuild its policy
# ----------------------------------------------------------------------------------------------------------


def _sac_settings(env_name, steps, seed, eval_episodes, num_evals):
    from brax.training.agents.sac import train as brax_train

    settings, dropped = compare.playground_settings("sac", env_name, brax_train.train, {})
    settings.pop("network_options", None)
    settings.update(num_timesteps=steps, num_evals=num_evals, episode_length=envs.episode_length(env_name),
                    action_repeat=1, seed=seed, num_eval_envs=eval_episodes, deterministic_eval=True)
    return settings, dropped


def train_sac(env_name: str, steps: int, seed: int, out: Path, eval_episodes: int, num_evals: int) -> None:
    brax_compat.install()
    from brax.training.agents.sac import train as brax_train
    from mujoco_playground import wrapper

    out.mkdir(parents=True, exist_ok=True)
    if (out / "params.pkl").exists():
        raise SystemExit(f"error: {out / 'params.pkl'} exists: pick another --out (nothing is overwritten)")
    settings, dropped = _sac_settings(env_name, steps, seed, eval_episodes, num_evals)
    env = envs.make(env_name, impl="jax")
    curve, start = [], time.perf_counter()

    def progress(num_steps, metrics):
        point = dict(env_steps=int(num_steps), wall_time_s=round(time.perf_counter() - start, 1),
                     eval_return=float(metrics["eval/episode_reward"]))
        curve.append(point)
        print(f"  brax-sac {point['env_steps']:>10,} steps  {point['wall_time_s']:7.1f} s  "
              f"eval {point['eval_return']:8.2f}", flush=True)

    _, params, _ = brax_train.train(environment=env, progress_fn=progress, wrap_env_fn=wrapper.wrap_for_brax_training,
                                    **settings)
    with open(out / "params.pkl", "wb") as f:
        pickle.dump(jax.device_get(params), f)
    record = dict(env=env_name, seed=seed, steps=steps, date=today(), machine=machine(), versions=versions(),
                  command=command_line("final_policies.py"), dropped=dropped, curve=curve)
    (out / "curve.json").write_text(json.dumps(record, indent=1))
    print(f"saved {out / 'params.pkl'}")


def sac_policy(env_name: str, params, observation_size: int, action_size: int):
    """SAC's deterministic action `a(obs)` (tanh of the mean), rebuilt from Playground's network settings."""
    from brax.training.acme import running_statistics
    from brax.training.agents.sac import networks as sac_networks

    settings, _ = _sac_settings(env_name, 1, 0, 1, 1)
    factory = settings.get("network_factory", sac_networks.make_sac_networks)
    network = factory(observation_size=observation_size, action_size=action_size,
                      preprocess_observations_fn=running_statistics.normalize)
    policy = sac_networks.make_inference_fn(network)(params, deterministic=True)
    return lambda obs: policy(obs, jax.random.PRNGKey(0))[0]


# ----------------------------------------------------------------------------------------------------------
# Rollouts on shared starts
# ----------------------------------------------------------------------------------------------------------


def rollout(env, act, starts, key, length):
    """Episodes of `act(obs, key) -> (env action, extra)` from the states `starts` (leaves [K, ...]).

    Returns per-step arrays `[T, K, ...]`: obs before the step, the action, its extra, reward and every
    `reward/*` metric (Playground's reward terms)."""

    def step(carry, step_key):
        state = carry
        action, extra = jax.vmap(act)(state.obs, jax.random.split(step_key, state.obs.shape[0]))
        next_state = jax.vmap(env.step)(state, action)
        terms = {k: v for k, v in next_state.metrics.items() if k.startswith("reward/")}
        return next_state, dict(obs=state.obs, action=action, extra=extra, reward=next_state.reward, **terms)

    _, traj = jax.lax.scan(step, starts, jax.random.split(key, length))
    return traj


def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """`[T, K]` -> `[T, K]`: G_t = Σ_{k ≥ t} γ^{k−t} r_k within the episode (a backward loop)."""
    returns = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[1:], rewards.dtype)
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[t] + gamma * running
        returns[t] = running
    return returns


def compare_policies(env_name: str, run_dir: Path, sac_dir: Path, episodes: int, horizon: int, split: int,
                     seed: int):
    try:
        config, _, record, restored = restore_run(run_dir)
    except UsageError as error:
        raise SystemExit(f"error: {error}") from None
    if record["num_seeds"] != 1:
        raise SystemExit(f"error: {run_dir} holds {record['num_seeds']} seeds; this compares a one-seed run")
    if config.env != env_name:
        raise SystemExit(f"error: {run_dir} trained {config.env}, not {env_name}")
    state = jax.tree.map(lambda x: x[0], restored.state)
    learner = state.learner
    env = envs.make(env_name, impl="jax")
    nets = make_networks(config, env.action_size, envs.views(env))
    obs_stats = state.obs_stats
    divisor = float(normalizer.reward_divisor(state.reward_stats)) if config.reward_normalization else 1.0
    to_env_units = divisor / config.reward_scale  # the critic predicts returns of reward · scale / divisor
    with open(sac_dir / "params.pkl", "rb") as f:
        sac_params = pickle.load(f)
    obs_size = envs.observation_size(env)
    sac_act = sac_policy(env_name, sac_params, obs_size, env.action_size)

    def pi(obs):
        return nets.policy.apply(learner.policy_params, normalizer.normalize(obs_stats, obs))

    def q(obs, action):  # an ensemble's members reduced as the learner reduces them
        values = nets.critic.apply(learner.critic_params, normalizer.normalize(obs_stats, obs), action)
        values = losses.pessimistic_value(values if config.num_critics > 1 else values[None],
                                          config.hparams.critic_pessimism)
        return values * to_env_units

    def purempo_mean(obs, key):
        mean, std = pi(obs)
        return acting.env_action(mean), std

    def purempo_sampled(obs, key):
        mean, std = pi(obs)
        return acting.env_action(mean + std * jax.random.normal(key, mean.shape)), std

    def sac_mean(obs, key):
        return sac_act(obs), pi(obs)[1]

    def sac_noisy(obs, key):  # SAC's gait under purempo's own noise at that state
        std = pi(obs)[1]
        return acting.env_action(sac_act(obs) + std * jax.random.normal(key, std.shape)), std

    key = jax.random.PRNGKey(seed)
    start_key, *mode_keys = jax.random.split(key, 5)
    starts = jax.vmap(env.reset)(jax.random.split(start_key, episodes))
    length = envs.time_limit(config)
    modes = dict(purempo_mean=purempo_mean, purempo_sampled=purempo_sampled, sac_mean=sac_mean, sac_noisy=sac_noisy)
    trajs = {name: jax.device_get(jax.jit(lambda s, k, act=act: rollout(env, act, s, k, length))(starts, k))
             for (name, act), k in zip(modes.items(), mode_keys)}

    table = {}
    for name, traj in trajs.items():
        returns = traj["reward"].sum(axis=0)
        terms = {k.split("/", 1)[1]: float(np.mean(v)) for k, v in traj.items() if k.startswith("reward/")}
        table[name] = dict(return_mean=float(returns.mean()), return_std=float(returns.std()),
                           return_min=float(returns.min()), return_max=float(returns.max()),
                           reward_terms=terms, policy_std=float(np.mean(traj["extra"])),
                           reward_start=float(traj["reward"][:split].mean()),
                           reward_after_start=float(traj["reward"][split:].mean()))

    # (2) purempo's critic on its own sampled-action episodes against the discounted Monte-Carlo return.
    sampled = trajs["purempo_sampled"]
    gamma = float(config.hparams.discount)
    mc = discounted_returns(np.asarray(sampled["reward"], np.float64), gamma)[:horizon]
    q_taken = np.asarray(jax.jit(q)(sampled["obs"][:horizon], sampled["action"][:horizon]))
    reward_max = float(np.max(sampled["reward"]))

    def critic_error(q_part, mc_part):
        return dict(q_mean=float(q_part.mean()), mc_return_mean=float(mc_part.mean()),
                    bias_mean=float((q_part - mc_part).mean()), abs_error_mean=float(np.abs(q_part - mc_part).mean()),
                    correlation=float(np.corrcoef(q_part.ravel(), mc_part.ravel())[0, 1]))

    critic = dict(horizon=horizon, tail_bound=float(gamma ** (length - horizon) / (1 - gamma) * reward_max),
                  **critic_error(q_taken, mc), start=critic_error(q_taken[:split], mc[:split]),
                  after_start=critic_error(q_taken[split:], mc[split:]))

    # (3) does that critic prefer SAC's action? Q(s, a_SAC(s)) − Q(s, μ_θ(s)) at both gaits' states.
    def preference(obs):
        mean, _ = pi(obs)
        return q(obs, sac_act(obs)) - q(obs, acting.env_action(mean))

    prefer = {}
    for name in ("purempo_mean", "sac_mean"):
        diff = np.asarray(jax.jit(jax.vmap(preference))(trajs[name]["obs"]))  # [T, K]
        prefer[f"at_{name}_states"] = {
            phase: dict(mean=float(part.mean()), fraction_positive=float((part > 0).mean()))
            for phase, part in (("all", diff), ("start", diff[:split]), ("after_start", diff[split:]))}
    return dict(policies=table, critic=critic, sac_action_preference=prefer, discount=gamma, start_steps=split,
                purempo_env_steps=int(state.iteration) * config.steps_per_iteration,
                purempo_checkpoint=restored.step, reward_divisor=divisor)


def report(result):
    split = result["start_steps"]
    print(f"{'policy':16s} {'return':>16s} {'min':>7s}  reward per step, t < {split} / later;  reward terms "
          f"(per-step means)")
    for name, row in result["policies"].items():
        terms = "  ".join(f"{k} {v:.4f}" for k, v in row["reward_terms"].items())
        print(f"{name:16s} {row['return_mean']:8.2f} ± {row['return_std']:5.2f} {row['return_min']:7.1f}  "
              f"{row['reward_start']:.4f} / {row['reward_after_start']:.4f};  {terms}")
    c = result["critic"]
    print(f"critic on purempo's sampled episodes, t < {c['horizon']} (tail ≤ {c['tail_bound']:.3f}):")
    for phase, row in (("all", c), (f"t < {split}", c["start"]), (f"{split} ≤ t", c["after_start"])):
        print(f"  {phase:10s} Q {row['q_mean']:8.2f}  Monte-Carlo {row['mc_return_mean']:8.2f}  bias "
              f"{row['bias_mean']:+6.2f}  |error| {row['abs_error_mean']:5.2f}  corr {row['correlation']:.3f}")
    for name, phases in result["sac_action_preference"].items():
        print(f"Q(s, a_SAC) − Q(s, μ_θ) {name}: " + ";  ".join(
            f"{phase} {row['mean']:+.3f} ({100 * row['fraction_positive']:.1f}% prefer SAC's)"
            for phase, row in phases.items()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train-sac", help="train Brax SAC with Playground's settings and save its parameters")
    train.add_argument("--env", required=True)
    train.add_argument("--steps", type=int, default=1_000_000)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--num-evals", type=int, default=11)
    train.add_argument("--eval-episodes", type=int, default=8)
    train.add_argument("--out", type=Path, required=True)
    cmp = sub.add_parser("compare", help="compare purempo's final policy with SAC's saved one")
    cmp.add_argument("--env", required=True)
    cmp.add_argument("--purempo-run", type=Path, required=True)
    cmp.add_argument("--sac", type=Path, required=True, help="the train-sac --out directory")
    cmp.add_argument("--episodes", type=int, default=64)
    cmp.add_argument("--horizon", type=int, default=500)
    cmp.add_argument("--start-steps", type=int, default=100,
                     help="the first steps of an episode, reported apart (getting up and going)")
    cmp.add_argument("--seed", type=int, default=123)
    cmp.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    try:
        family = envs.family(args.env)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    if family != envs.PLAYGROUND:
        raise SystemExit(f"error: --env {args.env!r}: this compares MuJoCo Playground tasks only")
    if args.command == "train-sac":
        train_sac(args.env, args.steps, args.seed, args.out, args.eval_episodes, args.num_evals)
        return
    out = RESULTS / f"final_policies_{args.name}.json"
    if out.exists():
        raise SystemExit(f"error: {out} exists: pick another --name (nothing is overwritten)")
    if not 0 < args.horizon < envs.episode_length(args.env):
        raise SystemExit(f"error: --horizon {args.horizon}: must be in (0, episode length)")
    if not 0 < args.start_steps < args.horizon:
        raise SystemExit(f"error: --start-steps {args.start_steps}: must be in (0, --horizon)")
    for needed in (args.sac / "params.pkl", args.sac / "curve.json", args.purempo_run / "config.json",
                   args.purempo_run / "metrics.jsonl"):
        if not needed.is_file():
            raise SystemExit(f"error: {needed} is missing (--sac: a train-sac --out; --purempo-run: a purempo "
                             f"train --run-dir)")
    start = time.perf_counter()
    result = compare_policies(args.env, args.purempo_run, args.sac, args.episodes, args.horizon, args.start_steps,
                              args.seed)
    sac_record = json.loads((args.sac / "curve.json").read_text())
    purempo_run = plotting.load_run(args.purempo_run)  # one row per evaluation, a resumed run's included
    purempo_curve = [dict(env_steps=row["env_steps"], eval_return=row["eval_return"],
                          eval_return_min=row["eval_return_min"]) for row in purempo_run.rows]
    result.update(env=args.env, date=today(), machine=machine(), versions=versions(),
                  command=command_line("final_policies.py"), episodes=args.episodes,
                  sac=dict(steps=sac_record["steps"], seed=sac_record["seed"], curve=sac_record["curve"],
                           command=sac_record["command"]),
                  purempo=dict(run_config=purempo_run.config, curve=purempo_curve),
                  wall_time_s=round(time.perf_counter() - start, 1))
    report(result)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
