"""Training throughput against the simulation ceiling, the cost of vmapped seeds, and a learner-step profile.

    python benchmarks/throughput.py --env inverted_pendulum
    python benchmarks/throughput.py --env halfcheetah --num-envs 16 64 256 --seeds 1 4
    python benchmarks/throughput.py --env ant --num-envs 256 1024 4096 16384 --seeds 1 4 16   # on a GPU
    python benchmarks/throughput.py --env CheetahRun --num-envs 64 256   # a MuJoCo Playground env: MJX vs Warp too

For each num_envs E the env's preset is run at its *default replay ratio* (sampled transitions per env step,
`updates_per_iteration * batch_size * sequence_length / (num_envs * unroll_length)`): updates per iteration are
scaled with E (and the unroll lengthened where fewer than one update would remain). Reported per E:
- compile time (init, training chunk and evaluation compiled together),
- training env steps/s and SGD updates/s over `--chunks` chunks after a warm-up chunk (evaluation excluded),
- the ceiling: env steps/s of a jitted random-action rollout at the same E, both through purempo's env
  wrapper (time limit + auto-reset from the config's reset pool) and the env's bare `vmap(env.step)`; the
  ratio is training / bare ceiling.
With `--compile-breakdown`, the preset's three programs (init, training chunk, evaluation) compiled one after
the other (what one core pays; `compile_trainer` compiles them on concurrent threads), and the run time of
init (the reset pool), of the first chunk and of one evaluation.
Then the default preset with 1, 4, 16... seeds vmapped in one program (cost per seed), and a profile of one
learner step (FLOPs from XLA's cost analysis; time of the sampled-action critic pass, the largest part).
For a MuJoCo Playground env, first the random-action ceiling of each physics implementation (`--impls`, default
MJX `jax` and MuJoCo Warp `warp`) at every E, which is what `envs.default_impl` was chosen by on a CPU.
Writes benchmarks/results/throughput_<env>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from common import RESULTS, command_line, jsonable, machine, parse_overrides, today, versions
from purempo import envs, replay
from purempo.presets import preset
from purempo.train import compile_trainer, learner_step, make_networks, make_optimizer, make_trainer

CHUNK_ITERATIONS = 8


def replay_ratio(config) -> float:
    return config.updates_per_iteration * config.batch_size * config.sequence_length / config.steps_per_iteration


def at_num_envs(base, num_envs: int):
    """`base` with `num_envs` envs, same replay ratio (and replay capacity per env), short prefill."""
    ratio = replay_ratio(base)
    samples = base.batch_size * base.sequence_length
    unroll = max(base.unroll_length, math.ceil(samples / (ratio * num_envs)))
    updates = max(1, round(ratio * num_envs * unroll / samples))
    steps_per_iteration = num_envs * unroll
    return base.replace(
        num_envs=num_envs, unroll_length=unroll, updates_per_iteration=updates,
        replay_size=max(base.replay_size, num_envs * (base.sequence_length + unroll) * 4),
        prefill_steps=steps_per_iteration * max(1, -(-base.sequence_length // unroll)),
        total_steps=steps_per_iteration * CHUNK_ITERATIONS * 1000, num_evals=1000,
    )


def time_training(config, num_seeds: int, chunks: int):
    """(compile s, env steps/s per seed, updates/s per seed) of `chunks` chunks after one warm-up chunk."""
    start = time.perf_counter()
    trainer = make_trainer(config)
    keys = jnp.stack([jax.random.PRNGKey(s) for s in range(num_seeds)])
    compiled = compile_trainer(trainer, keys, batched=True)
    compile_s = time.perf_counter() - start
    state = compiled.init(keys)
    for _ in range(1 + -(-config.prefill_iterations // config.iterations_per_eval)):  # prefill + warm-up
        state, metrics = compiled.train_chunk(state)
    jax.block_until_ready(state)
    tick = time.perf_counter()
    updates = 0.0
    for _ in range(chunks):
        state, metrics = compiled.train_chunk(state)
        updates += float(np.sum(jax.device_get(metrics["updates"])[0]))
    jax.block_until_ready(state)
    seconds = time.perf_counter() - tick
    steps = chunks * config.iterations_per_eval * config.steps_per_iteration
    return compile_s, steps / seconds, updates / seconds


def compile_breakdown(config):
    """Seconds to build the trainer, to compile each of its programs alone (sequentially), and to run init and one
    training chunk and one evaluation: where a run's start-up goes."""
    out = {}
    tick = time.perf_counter()
    trainer = make_trainer(config)
    out["make_trainer_s"] = time.perf_counter() - tick
    key = jax.random.PRNGKey(0)
    state_shape = jax.eval_shape(trainer.init, key)
    programs = dict(init=(jax.jit(trainer.init), (key,)),
                    train_chunk=(jax.jit(trainer.train_chunk), (state_shape,)),
                    evaluate_state=(jax.jit(trainer.evaluate_state), (state_shape,)))
    compiled = {}
    for name, (fn, args) in programs.items():
        tick = time.perf_counter()
        lowered = fn.lower(*args)
        out[f"{name}_trace_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        compiled[name] = lowered.compile()
        out[f"{name}_compile_s"] = time.perf_counter() - tick
    for name, run in (("init", lambda: compiled["init"](key)),
                      ("train_chunk", lambda: compiled["train_chunk"](state)),
                      ("evaluate_state", lambda: compiled["evaluate_state"](state))):
        tick = time.perf_counter()
        result = jax.block_until_ready(run())
        out[f"{name}_run_s"] = time.perf_counter() - tick
        if name == "init":
            state = result
    return {k: round(v, 1) for k, v in out.items()}


def time_ceiling(env, num_envs: int, episode_length: int, pool_size: int, steps: int = 64):
    """(wrapper, bare) env steps/s of random actions in [-1, 1] for `steps` lockstep steps; the wrapper's envs
    restart from a pool of `pool_size` initial states (the config's `reset_pool_size`, drawn before timing)."""
    action_size = env.action_size

    def wrapped(start, key):
        state = start

        def body(state, k):
            a_key, r_key = jax.random.split(k)
            action = jax.random.uniform(a_key, (num_envs, action_size), minval=-1.0, maxval=1.0)
            state, result = envs.step(env, state, action, r_key, episode_length)
            return state, result.reward

        # Depend on the final state: some envs' rewards are constant, and XLA drops unused physics.
        state, rewards = jax.lax.scan(body, state, jax.random.split(key, steps))
        return rewards.sum() + jnp.sum(envs.observation(state))

    def bare(state, key):

        def body(state, k):
            action = jax.random.uniform(k, (num_envs, action_size), minval=-1.0, maxval=1.0)
            state = jax.vmap(env.step)(state, action)
            return state, state.reward

        state, rewards = jax.lax.scan(body, state, jax.random.split(key, steps))
        return rewards.sum() + jnp.sum(state.obs)

    # Resets happen before timing (a DM Control reset settles the physics for up to 200 steps).
    bare_start = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(2), num_envs))
    rates = []
    for fn, start in ((wrapped, "wrapper"), (bare, bare_start)):
        try:
            if start == "wrapper":
                start = jax.jit(lambda key: envs.reset(env, key, num_envs, pool_size))(jax.random.PRNGKey(2))
            fn = jax.jit(fn)
            fn(start, jax.random.PRNGKey(0)).block_until_ready()
            tick = time.perf_counter()
            fn(start, jax.random.PRNGKey(1)).block_until_ready()
            rates.append(num_envs * steps / (time.perf_counter() - tick))
        except Exception as error:  # an implementation this machine cannot run: recorded, not fatal
            rates.append(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    return tuple(rates)


def _rate(value):
    return round(value, 1) if isinstance(value, float) else value


def _show(value):
    return f"{value:11,.0f}" if isinstance(value, float) else value


def profile_learner(config, repeats: int = 20):
    """Time and FLOPs of one learner step, and of its sampled-action target-critic pass alone."""
    env = envs.make(config.env, config.backend, config.impl)
    trainer = make_trainer(config)
    state = jax.jit(trainer.init)(jax.random.PRNGKey(0))
    nets, optimizer, hp = make_networks(config, env.action_size), make_optimizer(config), config.hparams
    buffer = state.replay._replace(size=jnp.asarray(config.capacity_per_env, state.replay.size.dtype))

    def updates(learner, key):
        def one(learner, k):
            sample_key, loss_key = jax.random.split(k)
            batch = replay.sample(buffer, sample_key, config.batch_size, config.sequence_length)
            return learner_step(learner, state.obs_stats, 1.0, batch, loss_key, hp, config, nets, optimizer)

        return jax.lax.scan(one, learner, jax.random.split(key, repeats))

    def sampled_critic(learner, key):
        batch = replay.sample(buffer, key, config.batch_size, config.sequence_length)

        def one(total, k):
            actions = jax.random.normal(k, (config.num_action_samples,) + batch.action.shape)
            return total + jnp.sum(nets.critic.apply(learner.target_critic_params, batch.next_obs, actions)), None

        return jax.lax.scan(one, 0.0, jax.random.split(key, repeats))[0]

    out = {}
    for name, fn in (("learner_step", updates), ("sampled_action_critic", sampled_critic)):
        compiled = jax.jit(fn).lower(state.learner, jax.random.PRNGKey(1)).compile()
        analysis = compiled.cost_analysis()
        analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
        jax.block_until_ready(compiled(state.learner, jax.random.PRNGKey(1)))
        tick = time.perf_counter()
        jax.block_until_ready(compiled(state.learner, jax.random.PRNGKey(2)))
        seconds = (time.perf_counter() - tick) / repeats
        # XLA counts a scan body once: its FLOPs are per step already.
        flops = float(analysis.get("flops", float("nan"))) if analysis else float("nan")
        out[name] = dict(ms=round(seconds * 1e3, 3), gflop=round(flops / 1e9, 4),
                         gflop_per_s=round(flops / 1e9 / seconds, 1))
    out["sampled_action_critic_share"] = round(out["sampled_action_critic"]["ms"] / out["learner_step"]["ms"], 3)
    out["critic_evaluations_per_step"] = config.num_action_samples * config.batch_size * config.sequence_length
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="inverted_pendulum")
    parser.add_argument("--num-envs", type=int, nargs="*", default=[16, 64, 256, 1024])
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 4, 16], help="vmapped seed counts to time")
    parser.add_argument("--chunks", type=int, default=3, help=f"timed chunks of {CHUNK_ITERATIONS} iterations")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--compile-breakdown", action="store_true",
                        help="time the preset's programs' compilation one by one (and init, one chunk, one evaluation)")
    parser.add_argument("--name", default=None, help="output file stem (default: throughput_ENV)")
    parser.add_argument("--impls", nargs="+", default=list(envs.PLAYGROUND_IMPLS),
                        help="Playground physics implementations whose ceilings to compare (Playground envs only)")
    args = parser.parse_args()
    base = preset(args.env, **parse_overrides(args.set))
    env = envs.make(base.env, base.backend, base.impl)
    print(f"{args.env} on {machine()}; default replay ratio {replay_ratio(base):.1f} sampled transitions per env step",
          flush=True)

    impls = []
    if envs.family(base.env) == envs.PLAYGROUND:
        for impl in args.impls:
            for num_envs in args.num_envs:
                row = dict(impl=impl, num_envs=num_envs)
                tick = time.perf_counter()
                wrapped, bare = time_ceiling(envs.playground_env(base.env, impl), num_envs, base.episode_length,
                                             base.reset_pool_size)
                row.update(seconds_with_compile=round(time.perf_counter() - tick, 1),
                           ceiling_wrapper_env_steps_per_s=_rate(wrapped), ceiling_bare_env_steps_per_s=_rate(bare))
                impls.append(row)
                print(f"impl {impl:>4}  E={num_envs:>6}  ceiling {_show(wrapped)} (wrapper)  {_show(bare)} (bare)  "
                      f"{row['seconds_with_compile']} s with compilation", flush=True)

    breakdown = None
    if args.compile_breakdown:
        breakdown = compile_breakdown(base)
        print("compile breakdown (s): " + ", ".join(f"{k} {v}" for k, v in breakdown.items()), flush=True)

    sweep = []
    for num_envs in args.num_envs:
        config = at_num_envs(base, num_envs)
        compile_s, sps, ups = time_training(config, 1, args.chunks)
        wrapped, bare = time_ceiling(env, num_envs, config.episode_length, config.reset_pool_size)
        if not isinstance(wrapped, float) or not isinstance(bare, float):
            raise SystemExit(f"error: the env's ceiling could not be measured: {wrapped} / {bare}")
        row = dict(num_envs=num_envs, unroll_length=config.unroll_length,
                   updates_per_iteration=config.updates_per_iteration, compile_s=round(compile_s, 1),
                   train_env_steps_per_s=round(sps, 1), updates_per_s=round(ups, 1),
                   ceiling_wrapper_env_steps_per_s=round(wrapped, 1), ceiling_bare_env_steps_per_s=round(bare, 1),
                   ratio=round(sps / bare, 4))
        sweep.append(row)
        print(f"E={num_envs:>6}  unroll {row['unroll_length']:>3}  updates/it {row['updates_per_iteration']:>4}  "
              f"compile {row['compile_s']:5.1f} s  train {sps:10,.0f} sps {ups:7.1f} upd/s  "
              f"ceiling {wrapped:11,.0f} (wrapper) {bare:11,.0f} (bare)  ratio {row['ratio']:.3f}", flush=True)

    seeds = []
    seed_config = base.replace(total_steps=base.steps_per_iteration * CHUNK_ITERATIONS * 1000, num_evals=1000)
    for count in args.seeds:
        compile_s, sps, ups = time_training(seed_config, count, args.chunks)
        row = dict(num_seeds=count, compile_s=round(compile_s, 1), env_steps_per_s_per_seed=round(sps, 1),
                   env_steps_per_s_total=round(sps * count, 1), updates_per_s_per_seed=round(ups, 1))
        seeds.append(row)
        print(f"{count:>3} seed(s) vmapped at E={base.num_envs}: compile {compile_s:5.1f} s, {sps:9,.0f} sps per seed, "
              f"{sps * count:10,.0f} sps total, {ups:6.1f} updates/s per seed", flush=True)

    profile = None if args.no_profile else profile_learner(base)
    if profile:
        print(f"learner step: {profile['learner_step']['ms']:.2f} ms, {profile['learner_step']['gflop']:.3f} GFLOP "
              f"({profile['learner_step']['gflop_per_s']:.1f} GFLOP/s); sampled-action target critic "
              f"({profile['critic_evaluations_per_step']:,} evaluations): {profile['sampled_action_critic']['ms']:.2f} ms "
              f"= {profile['sampled_action_critic_share']:.0%} of the step", flush=True)

    summary = dict(env=args.env, date=today(), machine=machine(), versions=versions(),
                   command=command_line("throughput.py"),
                   replay_ratio=replay_ratio(base), config=jsonable(base), playground_impls=impls, num_envs_sweep=sweep,
                   vmapped_seeds=seeds, learner_profile=profile, compile_breakdown=breakdown)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name or 'throughput_' + args.env}.json").write_text(json.dumps(summary, indent=1) + "\n")
    print("\n| num_envs | unroll | updates/iter | compile (s) | train env steps/s | updates/s | ceiling (wrapper) "
          "| ceiling (bare env) | train / ceiling |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sweep:
        print(f"| {r['num_envs']:,} | {r['unroll_length']} | {r['updates_per_iteration']} | {r['compile_s']} | "
              f"{r['train_env_steps_per_s']:,.0f} | {r['updates_per_s']:,.1f} | {r['ceiling_wrapper_env_steps_per_s']:,.0f} | "
              f"{r['ceiling_bare_env_steps_per_s']:,.0f} | {r['ratio']:.3f} |")
    if impls:
        print("\n| impl | num_envs | ceiling (wrapper) | ceiling (bare) |\n|---|---:|---:|---:|")
        for r in impls:
            print(f"| {r['impl']} | {r['num_envs']:,} | {_show(r['ceiling_wrapper_env_steps_per_s']).strip()} | "
                  f"{_show(r['ceiling_bare_env_steps_per_s']).strip()} |")
    if seeds:
        print("\n| seeds vmapped | compile (s) | env steps/s per seed | env steps/s total | updates/s per seed |\n"
              "|---:|---:|---:|---:|---:|")
        for r in seeds:
            print(f"| {r['num_seeds']} | {r['compile_s']} | {r['env_steps_per_s_per_seed']:,.0f} | "
                  f"{r['env_steps_per_s_total']:,.0f} | {r['updates_per_s_per_seed']:,.1f} |")


if __name__ == "__main__":
    main()
