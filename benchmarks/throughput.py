"""Training throughput against the simulation ceiling, the cost of vmapped seeds, and a learner-step profile.

    python benchmarks/throughput.py --env inverted_pendulum
    python benchmarks/throughput.py --env halfcheetah --num-envs 16 64 256 --seeds 1 4
    python benchmarks/throughput.py --env ant --num-envs 256 1024 4096 16384 --seeds 1 4 16   # on a GPU
    python benchmarks/throughput.py --env CheetahRun --num-envs 64 256   # a MuJoCo Playground env: MJX vs Warp too
    python benchmarks/throughput.py --scale gpu --env humanoid   # H100 estimate of the GPU preset (runs on a CPU)

For each num_envs E the env's preset is run at its *default replay ratio* (sampled transitions per env step,
`updates_per_iteration * batch_size * sequence_length / (num_envs * unroll_length)`): updates per iteration are
scaled with E (and the unroll lengthened where fewer than one update would remain). Reported per E:
- compile time (init, training chunk and evaluation compiled together),
- training env steps/s and SGD updates/s over `--chunks` chunks after a warm-up chunk (evaluation excluded),
- the ceiling: env steps/s of a jitted random-action rollout at the same E, both through purempo's env
  wrapper (time limit + auto-reset from the config's reset pool) and the env's bare `vmap(env.step)`; the
  ratio is training / bare ceiling.
With `--compile-breakdown`, the preset's three programs (init, training chunk, evaluation) compiled one after
the other (what one core pays; the driver compiles them on concurrent threads), and the run time of
init (the reset pool), of the first chunk and of one evaluation.
Then the default preset with 1, 4, 16... seeds vmapped in one program (cost per seed), and a profile of one
learner step (FLOPs from XLA's cost analysis; time of the sampled-action critic pass, the largest part).
For a MuJoCo Playground env, first the random-action ceiling of each physics implementation (`--impls`, default
MJX `jax` and MuJoCo Warp `warp`) at every E, which is what `envs.default_impl` was chosen by on a CPU.
Writes benchmarks/results/throughput_<env>.json.

`--scale gpu` instead *estimates* the env's GPU preset (`preset(env, scale="gpu")`) on an H100 SXM without one:
it compiles, at the preset's full size, one learner step (`train.learner_step` on a batch shaped like
`replay.sample`'s), one acting step (`acting.rollout` of one lockstep step of all num_envs envs with the policy)
and the bare random-action `vmap(env.step)`, reads XLA's cost analysis of each ('flops', 'bytes accessed'),
and turns them into roofline times (`roofline_seconds`: max(FLOPs / peak FLOP/s, bytes / bandwidth)) and
training rates at the preset's replay ratio (`training_estimate`). The ratio to the simulation rate uses a
published figure where one fits (`PUBLISHED_SIMULATION`) next to the bare step's roofline. It also times a few
calls of the same compiled programs on this machine and reports the replay's bytes per transition. Writes
benchmarks/results/throughput_<env>_gpu_estimate.json. Every rate it derives is an estimate, labelled so.
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
from purempo import acting, driver, envs, replay
from purempo.presets import preset
from purempo.train import learner_step, make_networks, make_optimizers, make_trainer

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
    keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)  # the seeds of `purempo train --num-seeds N`
    compiled = driver.lower_programs(config, keys).compile()  # what the driver runs
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
    nets, optimizer, hp = make_networks(config, env.action_size), make_optimizers(config), config.hparams
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


# --- --scale gpu: roofline estimates -------------------------------------------------------------------------

# NVIDIA H100 SXM5 (datasheet): FP32 67 TFLOP/s (CUDA cores), TF32 tensor cores 494.7 TFLOP/s dense (989.4 with
# sparsity), HBM3 3.35 TB/s. The estimate uses the FP32 peak: the learner's matmuls are small (K = 256-512 wide
# layers, fused with elementwise work), JAX's default f32 precision is not guaranteed to take the TF32 path, and
# the one GPU throughput measured here bounds the effective rate near it: CheetahRun on one H200 at 1,024 envs,
# 2 seeds, 32 sampled transitions per env step ran 173.7k env steps/s in all (docs/journal.md §7), i.e.
# ~3.7 MFLOP × 32 × 173.7k ≈ 21 TFLOP/s of learner work with the simulation included: 0.3× the FP32 peak (the
# H200's FP32 peak equals the H100's), 0.04× the TF32 one. TF32 figures are reported too, as "tf32" alternatives.
H100_SXM = dict(name="NVIDIA H100 SXM5", peak_flops=67e12, peak_flops_label="FP32 (non-tensor) 67 TFLOP/s",
                tf32_flops=494.7e12, tf32_label="TF32 tensor 494.7 TFLOP/s dense",
                bandwidth=3.35e12, bandwidth_label="HBM3 3.35 TB/s")

# Published simulation rates (env steps/s) that fit an env's GPU preset, with their source.
PUBLISHED_SIMULATION = {
    # Brax PPO's *training* rate (learning included, so the bare simulation is at least this fast) on one A100.
    "CheetahRun": dict(env_steps_per_s=435_162.0, source=(
        "MuJoCo Playground (Zakka et al. 2025, arXiv 2502.08844) Table IV: Brax PPO trains CheetahRun at 435,162 "
        "env steps/s on one A100 (MJX), its learning included: a lower bound of the simulation rate")),
    # MJX-JAX physics steps of one humanoid per scene; Brax humanoid takes 5 physics steps (dt 0.015 / 0.003).
    "humanoid": dict(env_steps_per_s=950_000.0 / 5, source=(
        "MuJoCo MJX documentation (doc/mjx.rst, 'Large, complex scenes'): 950K physics steps/s for one humanoid "
        "on an A100 at a batch of 8,192 (MJX-JAX); / 5 physics steps per Brax humanoid env step = 190k env "
        "steps/s. purempo's Brax humanoid runs Brax's default (generalized) physics, not MJX: the nearest "
        "published figure, not the same program")),
    # Brax PPO's training rate on ant over 8 H100s, divided by 8: per GPU, learning included (a lower bound of
    # the simulation rate, like CheetahRun's), at 1,024 envs per GPU where the GPU preset steps 4,096.
    "ant": dict(env_steps_per_s=924_447.80 / 8, source=(
        "milabench (mila-iqia/milabench PR #277, benchmark results of 2024-09-11): the 'brax' benchmark, Brax "
        "PPO on ant (generalized backend, 8,192 envs), trains at 924,447.80 env steps/s on 8 NVIDIA H100 80GB; "
        "/ 8 = 115,556 env steps/s per H100, its learning included: a lower bound of the simulation rate, "
        "at 1,024 envs per GPU")),
}


def roofline_seconds(flops: float, bytes_accessed: float, peak_flops: float, bandwidth: float) -> float:
    """Roofline time of one program: max(flops / peak_flops, bytes_accessed / bandwidth) seconds."""
    return max(flops / peak_flops, bytes_accessed / bandwidth)


def training_estimate(learn_s: float, act_s: float, bare_s: float, num_envs: int, unroll_length: int,
                      updates_per_iteration: int, simulation_env_steps_per_s=None) -> dict:
    """Rates of a training loop of iterations of `unroll_length` acting steps (`act_s` each: policy + env step of
    all `num_envs` envs) and `updates_per_iteration` learner steps (`learn_s` each), run one after the other.

    `bare_s` is one bare `vmap(env.step)` of all envs. With a published `simulation_env_steps_per_s`, the acting
    step's simulation part is replaced by that rate (what the policy and wrapper add, act_s − bare_s, is kept).
    """
    iteration_s = unroll_length * act_s + updates_per_iteration * learn_s
    steps = num_envs * unroll_length
    out = dict(iteration_s=iteration_s, train_env_steps_per_s=steps / iteration_s,
               updates_per_s=updates_per_iteration / iteration_s,
               simulation_env_steps_per_s_roofline=num_envs / bare_s,
               learner_share=updates_per_iteration * learn_s / iteration_s)
    out["ratio_to_roofline_simulation"] = out["train_env_steps_per_s"] / out["simulation_env_steps_per_s_roofline"]
    if simulation_env_steps_per_s:
        step_s = num_envs / simulation_env_steps_per_s + max(0.0, act_s - bare_s)
        iteration_pub = unroll_length * step_s + updates_per_iteration * learn_s
        out["train_env_steps_per_s_with_published_simulation"] = steps / iteration_pub
        out["updates_per_s_with_published_simulation"] = updates_per_iteration / iteration_pub
        out["ratio_to_published_simulation"] = steps / iteration_pub / simulation_env_steps_per_s
    return out


def _cost(compiled) -> dict:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return dict(flops=float(analysis.get("flops", 0.0)), bytes_accessed=float(analysis.get("bytes accessed", 0.0)))


def _random_like(shapes, key):
    """Concrete arrays shaped like `shapes` (ShapeDtypeStructs): normal floats, zero ints, False bools."""
    leaves, tree = jax.tree.flatten(shapes)
    keys = jax.random.split(key, len(leaves))
    def one(s, k):
        if jnp.issubdtype(s.dtype, jnp.floating):
            return jax.random.normal(k, s.shape, s.dtype)
        return jnp.zeros(s.shape, s.dtype)
    return jax.tree.unflatten(tree, [one(s, k) for s, k in zip(leaves, keys)])


def gpu_programs(config):
    """The three programs of `config` at full size: {name: (jitted fn, concrete-args builder, abstract args)}."""
    env = envs.make(config.env, config.backend, config.impl)
    trainer = make_trainer(config)
    key = jax.random.PRNGKey(0)
    state = jax.eval_shape(trainer.init, key)
    nets = make_networks(config, env.action_size, envs.views(env))
    optimizer, hp = make_optimizers(config), config.hparams
    batch = jax.eval_shape(lambda r, k: replay.sample(r, k, config.batch_size, config.sequence_length),
                           state.replay, key)

    def learn(learner, obs_stats, batch, k):
        return learner_step(learner, obs_stats, 1.0, batch, k, hp, config, nets, optimizer)

    def act(policy_params, obs_stats, env_state, noise, k):
        return acting.rollout(env, nets.policy, policy_params, obs_stats, env_state, k, 1, envs.time_limit(config),
                              hp.reward_scale, noise, hp.exploration_correlation)

    def bare(sim_state, k):
        action = jax.random.uniform(k, (config.num_envs, env.action_size), minval=-1.0, maxval=1.0)
        return jax.vmap(env.step)(sim_state, action)

    # Concrete inputs without the replay (12M+ transitions): jit drops what the returned parts do not need.
    def learner_inputs():
        learner, obs_stats = jax.jit(lambda k: (lambda s: (s.learner, s.obs_stats))(trainer.init(k)))(key)
        return learner, obs_stats, _random_like(batch, jax.random.PRNGKey(1)), jax.random.PRNGKey(2)

    def act_inputs():
        params, obs_stats, env_state, noise = jax.jit(lambda k: (lambda s: (
            s.learner.policy_params, s.obs_stats, s.env_state, s.exploration_noise))(trainer.init(k)))(key)
        return params, obs_stats, env_state, noise, jax.random.PRNGKey(3)

    def bare_inputs():
        sim = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(4), config.num_envs))
        return sim, jax.random.PRNGKey(5)

    programs = dict(
        learner_step=(learn, learner_inputs, (state.learner, state.obs_stats, batch, key)),
        acting_step=(act, act_inputs, (state.learner.policy_params, state.obs_stats, state.env_state,
                                       state.exploration_noise, key)),
        bare_env_step=(bare, bare_inputs, (state.env_state.sim_state, key)),
    )
    return programs, state


def gpu_estimate(config, cpu_calls: int = 2, peaks=H100_SXM) -> dict:
    """Cost analysis, roofline estimates and measured CPU rates of `config`'s three programs (see the docstring)."""
    programs, state = gpu_programs(config)
    rows = {}
    for name, (fn, inputs, abstract) in programs.items():
        tick = time.perf_counter()
        compiled = jax.jit(fn).lower(*abstract).compile()
        compile_s = time.perf_counter() - tick
        cost = _cost(compiled)
        hlo = compiled.as_text() or ""
        row = dict(compile_s=round(compile_s, 1), **cost, while_loops_in_hlo=hlo.count(" while("),
                   estimate_h100_s=roofline_seconds(cost["flops"], cost["bytes_accessed"], peaks["peak_flops"],
                                                    peaks["bandwidth"]),
                   estimate_h100_tf32_s=roofline_seconds(cost["flops"], cost["bytes_accessed"], peaks["tf32_flops"],
                                                         peaks["bandwidth"]))
        row["estimate_bound"] = ("compute" if cost["flops"] / peaks["peak_flops"] >= cost["bytes_accessed"] /
                                 peaks["bandwidth"] else "memory")
        args = inputs()
        jax.block_until_ready(compiled(*args))  # warm-up
        tick = time.perf_counter()
        for _ in range(cpu_calls):
            jax.block_until_ready(compiled(*args))
        row["cpu_measured_s"] = (time.perf_counter() - tick) / cpu_calls
        del args, compiled
        rows[name] = row
        print(f"{name}: compiled in {compile_s:.1f} s; {cost['flops'] / 1e9:,.2f} GFLOP, "
              f"{cost['bytes_accessed'] / 1e9:,.3f} GB accessed; estimate on H100 {row['estimate_h100_s'] * 1e3:.3f} ms "
              f"({row['estimate_bound']} bound); measured here {row['cpu_measured_s'] * 1e3:,.1f} ms per call",
              flush=True)

    ratio = replay_ratio(config)
    published = PUBLISHED_SIMULATION.get(config.env)
    sim = published["env_steps_per_s"] if published else None
    args = (config.num_envs, config.unroll_length, config.updates_per_iteration)
    learn, act, bare = rows["learner_step"], rows["acting_step"], rows["bare_env_step"]
    estimate = training_estimate(learn["estimate_h100_s"], act["estimate_h100_s"], bare["estimate_h100_s"], *args, sim)
    estimate_tf32 = training_estimate(learn["estimate_h100_tf32_s"], act["estimate_h100_tf32_s"],
                                      bare["estimate_h100_tf32_s"], *args, sim)
    measured = training_estimate(learn["cpu_measured_s"], act["cpu_measured_s"], bare["cpu_measured_s"], *args)
    per_transition = replay.nbytes_per_transition(state.replay)
    transitions = config.capacity_per_env * config.num_envs
    return dict(
        peaks=peaks, replay_ratio=ratio, programs=rows,
        estimate_h100=estimate, estimate_h100_tf32_alternative=estimate_tf32,
        published_simulation=published,
        simulation_env_steps_per_s_used=sim or estimate["simulation_env_steps_per_s_roofline"],
        simulation_source=(published["source"] if published else
                           "no published figure fits: the roofline estimate of the bare vmap(env.step)"),
        ratio_to_simulation_estimate=(estimate["ratio_to_published_simulation"] if published
                                      else estimate["ratio_to_roofline_simulation"]),
        cpu_measured=dict(machine=machine(), train_env_steps_per_s=measured["train_env_steps_per_s"],
                          updates_per_s=measured["updates_per_s"],
                          bare_env_steps_per_s=measured["simulation_env_steps_per_s_roofline"],
                          acting_env_steps_per_s=config.num_envs / act["cpu_measured_s"],
                          calls_timed=cpu_calls),
        learner_flops_per_sampled_transition=learn["flops"] / (config.batch_size * config.sequence_length),
        replay=dict(bytes_per_transition=per_transition, transitions=transitions,
                    steps_per_env=config.capacity_per_env, obs_dtype=config.replay_obs_dtype,
                    total_bytes=per_transition * transitions),
    )


def main_gpu(args):
    overrides = parse_overrides(args.set)
    config = preset(args.env, scale="gpu", **overrides)
    if envs.family(config.env) == envs.PLAYGROUND and "impl" not in overrides:
        config = config.replace(impl="jax")  # XLA's cost analysis sees MJX's ops, not Warp's CUDA kernels
    print(f"{args.env} GPU preset on {machine()}: {config.num_envs:,} envs, unroll {config.unroll_length}, "
          f"{config.updates_per_iteration} updates/iteration of {config.batch_size:,} x {config.sequence_length} "
          f"(replay ratio {replay_ratio(config):g}); estimates for {H100_SXM['name']} at "
          f"{H100_SXM['peak_flops_label']}, {H100_SXM['bandwidth_label']}", flush=True)
    result = gpu_estimate(config, cpu_calls=args.cpu_calls)
    e, m, r = result["estimate_h100"], result["cpu_measured"], result["replay"]
    summary = dict(env=args.env, scale="gpu", date=today(), machine=machine(), versions=versions(),
                   command=command_line("throughput.py"), config=jsonable(config),
                   note=("every *estimate* field is a roofline estimate for an H100 SXM from XLA's cost analysis of "
                         "programs compiled for this machine's CPU back end (GPU fusion differs, so 'bytes accessed' "
                         "is indicative; XLA counts a while loop's body once, so physics with inner loops is "
                         "under-counted and its roofline rate is optimistic); cpu_measured fields are measured here"),
                   **result)
    rate = e.get("train_env_steps_per_s_with_published_simulation", e["train_env_steps_per_s"])
    summary["estimate_h100_seconds_to"] = {f"{n:,}": n / rate for n in (2_000_000, 10_000_000)}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{args.name or 'throughput_' + args.env + '_gpu_estimate'}.json"
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\n| program | GFLOP | GB accessed | estimate H100 (ms) | bound | measured here (ms) |\n|---|---:|---:|---:|---|---:|")
    for name, row in result["programs"].items():
        print(f"| {name} | {row['flops'] / 1e9:,.2f} | {row['bytes_accessed'] / 1e9:,.3f} | "
              f"{row['estimate_h100_s'] * 1e3:.3f} | {row['estimate_bound']} | {row['cpu_measured_s'] * 1e3:,.1f} |")
    print(f"\n| quantity | value |\n|---|---:|")
    rows = [("replay ratio (sampled transitions per env step)", f"{result['replay_ratio']:g}"),
            ("learner FLOPs per sampled transition", f"{result['learner_flops_per_sampled_transition'] / 1e6:.2f} M"),
            ("estimate: updates/s (H100, roofline)", f"{e['updates_per_s']:,.0f}"),
            ("estimate: training env steps/s (H100, roofline sim)", f"{e['train_env_steps_per_s']:,.0f}"),
            ("estimate: random-action env steps/s (H100, roofline of bare step)",
             f"{e['simulation_env_steps_per_s_roofline']:,.0f}"),
            ("estimate: training / roofline simulation", f"{e['ratio_to_roofline_simulation']:.3f}")]
    if "ratio_to_published_simulation" in e:
        rows += [("published simulation env steps/s", f"{result['published_simulation']['env_steps_per_s']:,.0f}"),
                 ("estimate: training env steps/s with the published simulation",
                  f"{e['train_env_steps_per_s_with_published_simulation']:,.0f}"),
                 ("estimate: training / published simulation", f"{e['ratio_to_published_simulation']:.3f}")]
    rows += [("estimate (TF32 alternative): training env steps/s",
              f"{result['estimate_h100_tf32_alternative']['train_env_steps_per_s']:,.0f}"),
             ("estimate: training wall time to 2M / 10M env steps (s, compilation excluded)",
              " / ".join(f"{v:,.0f}" for v in summary["estimate_h100_seconds_to"].values())),
             ("measured here: training env steps/s (programs one after the other)", f"{m['train_env_steps_per_s']:,.1f}"),
             ("measured here: updates/s", f"{m['updates_per_s']:,.3f}"),
             ("measured here: bare env steps/s", f"{m['bare_env_steps_per_s']:,.0f}"),
             ("replay bytes per transition", f"{r['bytes_per_transition']:,.1f} ({r['obs_dtype']} observations)"),
             ("replay total", f"{r['total_bytes'] / 1e9:,.2f} GB ({r['transitions']:,} transitions)")]
    for label, value in rows:
        print(f"| {label} | {value} |")
    print(f"\nsimulation rate: {result['simulation_source']}")
    print(f"target (training >= 0.5x simulation): estimate {result['ratio_to_simulation_estimate']:.3f} -> "
          f"{'met' if result['ratio_to_simulation_estimate'] >= 0.5 else 'NOT met'}")


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
    parser.add_argument("--scale", choices=("cpu", "gpu"), default="cpu",
                        help="gpu: H100 roofline estimate of the env's GPU preset instead of the CPU sweep")
    parser.add_argument("--cpu-calls", type=int, default=2,
                        help="--scale gpu: timed calls of each full-size program on this machine")
    args = parser.parse_args()
    if envs.family(args.env) == envs.GYMNAX:  # its rollouts and updates are the Gaussian policy's
        raise SystemExit(f"error: {args.env} has discrete actions: its env steps/s are in benchmarks/gymnax_curves.py")
    if args.scale == "gpu":
        return main_gpu(args)
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
                wrapped, bare = time_ceiling(envs.playground_env(base.env, impl), num_envs, envs.time_limit(base),
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
        wrapped, bare = time_ceiling(env, num_envs, envs.time_limit(config), config.reset_pool_size)
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
