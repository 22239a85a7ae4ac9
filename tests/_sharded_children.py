"""Checks that need several JAX devices, run in a child process that tests/test_sharding.py starts with
`--xla_force_host_platform_device_count=4` (a JAX process fixes its device count when its back end starts).

    python tests/_sharded_children.py CHECK OUT.json [ARGS...]

Each check writes a JSON object of what it measured to OUT.json; the tests assert on it.
"""

import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from purempo import driver, sharding
from purempo.config import Config

TINY = Config(num_envs=16, total_steps=16 * 2 * 40, num_evals=4, prefill_steps=160, replay_size=16 * 64,
              batch_size=16, sequence_length=4, updates_per_iteration=2, eval_episodes=4, reset_pool_size=64,
              episode_length=100, num_action_samples=4, policy_hidden=(16, 16), critic_hidden=(16, 16))


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def learner_step(out, critic_head="scalar"):
    """One sharded update against the mean of per-shard gradients computed one shard at a time."""
    from jax.sharding import PartitionSpec as P

    from purempo import train
    from purempo.types import Transition

    config = TINY.replace(batch_size=8, critic_head=critic_head, reward_range=(0.0, 1.0))
    trainer = train.make_trainer(config)
    state = trainer.init(jax.random.PRNGKey(0))
    optimizers = train.make_optimizers(config)
    obs_dim, action_dim, (batch, length) = state.obs_stats.mean.shape[0], 1, (8, config.sequence_length)
    nets = train.make_networks(config, action_dim)  # inverted_pendulum: one action
    k = iter(jax.random.split(jax.random.PRNGKey(1), 8))
    data = Transition(
        obs=jax.random.normal(next(k), (batch, length, obs_dim)),
        action=jax.random.normal(next(k), (batch, length, action_dim)),
        reward=jax.random.normal(next(k), (batch, length)),
        terminated=jnp.zeros((batch, length), bool),
        truncated=jax.random.bernoulli(next(k), 0.2, (batch, length)),
        next_obs=jax.random.normal(next(k), (batch, length, obs_dim)),
        behaviour_log_prob=-jax.random.uniform(next(k), (batch, length)),
    )
    hp, key = config.hparams, jax.random.PRNGKey(2)
    mesh = sharding.make_mesh(4)

    def step(learner, shard):
        return train.learner_step(learner, state.obs_stats, 1.0, shard, key, hp, config, nets, optimizers,
                                  sharding.AXIS)

    sharded, metrics = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(sharding.AXIS)), out_specs=(P(), P()),
                                             check_vma=False))(state.learner, data)
    # The reference: each quarter's gradients on one device, averaged with NumPy, one optimiser step.
    learner = state.learner
    params = (learner.policy_params, learner.critic_params, learner.dual_params)
    grads = [jax.grad(train.mpo_loss, has_aux=True)(params, learner, state.obs_stats, 1.0,
                                                     jax.tree.map(lambda x: x[2 * d:2 * d + 2], data), key, hp,
                                                     config, nets)[0] for d in range(4)]
    mean = jax.tree.map(lambda *g: np.mean(np.stack(g), axis=0), *grads)
    adam = optimizers.networks
    policy, policy_opt = train.apply_updates(adam, mean[0], learner.policy_opt_state, learner.policy_params,
                                             train.policy_learning_rate(hp, learner.num_updates))
    critic, critic_opt = train.apply_updates(adam, mean[1], learner.critic_opt_state, learner.critic_params,
                                             hp.critic_lr)
    # Adam's update hardly sees a gradient's scale, its first moment does: summed gradients would show there.
    summed = jax.tree.map(lambda *g: np.sum(np.stack(g), axis=0), *grads)
    gap = lambda a, b: max(float(np.max(np.abs(x - y))) for x, y in zip(_leaves(a), _leaves(b)))  # noqa: E731
    _, critic_opt_if_summed = train.apply_updates(adam, summed[1], learner.critic_opt_state,
                                                  learner.critic_params, hp.critic_lr)
    json.dump(dict(policy_gap=gap(sharded.policy_params, policy), critic_gap=gap(sharded.critic_params, critic),
                   critic_moved=gap(critic, learner.critic_params),
                   moments_gap=max(gap(sharded.policy_opt_state, policy_opt), gap(sharded.critic_opt_state, critic_opt)),
                   moments_gap_to_summed=gap(sharded.critic_opt_state, critic_opt_if_summed),
                   moments_size=gap(critic_opt, learner.critic_opt_state),
                   copies_equal=all(all(np.array_equal(c[0], x) for x in c) for c in
                                    (sharding.device_copies(leaf) for leaf in jax.tree.leaves(sharded))),
                   ), open(out, "w"))


class _StopAfter(driver.Callbacks):
    def __init__(self, evaluation):
        self.evaluation = evaluation

    def evaluated(self, row, steps_per_second):
        if row["eval"] == self.evaluation:
            raise KeyboardInterrupt


def _final(run_dir, num_seeds):
    """The newest checkpoint of a 4-device run directory, restored onto the host in full."""
    from purempo import checkpoint
    from purempo.train import make_trainer

    config, record = driver.load_run_config(run_dir)
    keys = jax.random.split(jax.random.PRNGKey(record["seed"]), num_seeds)
    abstract = jax.eval_shape(jax.vmap(make_trainer(config).init), keys)  # one device: the global shapes
    return checkpoint.restore(run_dir, abstract)


def run_and_resume(out, root, env="inverted_pendulum"):
    """A 4-device run with 2 seeds on `env`, uninterrupted and interrupted + resumed; replicated leaves per device."""

    root = Path(root)
    config = TINY.replace(env=env)
    options = driver.Options(num_seeds=2, tensorboard=False, checkpoint_replay="always")
    whole = driver.train(config, root / "whole", options)
    try:
        driver.train(config, root / "cut", options, callbacks=_StopAfter(2))
    except driver.Interrupted:  # the driver's answer to a KeyboardInterrupt: what was kept, how to continue
        pass
    cut_steps = sorted(int(p.name) for p in (root / "cut" / "checkpoints").iterdir() if p.name.isdigit())
    driver.train(config, root / "cut", options, resume=True)
    a, b = _final(whole, 2), _final(root / "cut", 2)
    identical = all(np.array_equal(x, y, equal_nan=True) for x, y in zip(_leaves(a.state), _leaves(b.state)))
    # Per-device copies of the replicated parameters straight from the 4-device programs (the runs' own).
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    compiled = driver.lower_programs(config, keys, num_devices=4, mesh=sharding.make_mesh(4)).compile()
    state = compiled.init(keys)
    for _ in range(config.num_evals):
        state, _ = compiled.train_chunk(state)
    learner_leaves = jax.tree.leaves(state.learner)
    obs = state.replay.data.obs
    rows = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    json.dump(dict(identical=identical, cut_steps=cut_steps, final_step=b.step, num_leaves=len(_leaves(a.state)),
                   learner_copies_equal=all(all(np.array_equal(c[0], x) for x in c)
                                            for c in map(sharding.device_copies, learner_leaves)),
                   num_copies=len(sharding.device_copies(learner_leaves[0])),
                   replay_shard_shape=list(obs.addressable_shards[0].data.shape), replay_shape=list(obs.shape),
                   eval_returns=[row["eval_return_per_seed"] for row in rows],
                   seeds_differ=rows[-1]["eval_return_per_seed"][0] != rows[-1]["eval_return_per_seed"][1]),
              open(out, "w"))


def learn(out, run_dir):
    """inverted_pendulum's default config on 4 devices, one seed, through the driver."""
    config = Config(total_steps=60_000, num_evals=6)
    driver.train(config, Path(run_dir), driver.Options(tensorboard=False, checkpoint_replay="never"))
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    json.dump(dict(devices=jax.device_count(), returns=[row["eval_return"] for row in rows],
                   steps=[row["env_steps"] for row in rows]), open(out, "w"))




def two_processes(out, process_id, port, run_dir):
    """One of two processes (2 CPU devices each) training one 4-device run through the driver. Process 1
    finishes compiling, and process 0 writing the run's config, 35 s after the other: longer than gloo lets a
    first collective wait (30 s)."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=int(process_id))
    owner, name = (driver.Lowered, "compile") if int(process_id) == 1 else (driver, "start_new_run")
    original = getattr(owner, name)
    setattr(owner, name, lambda *args, **kwargs: (time.sleep(35), original(*args, **kwargs))[1])
    options = driver.Options(num_seeds=2, tensorboard=False, checkpoint_replay="always")
    driver.train(TINY, Path(run_dir), options)
    json.dump(dict(process_count=jax.process_count(), device_count=jax.device_count(),
                   local_devices=jax.local_device_count()), open(out, "w"))


if __name__ == "__main__":
    check, out, *rest = sys.argv[1:]
    dict(learner_step=learner_step, run_and_resume=run_and_resume, learn=learn,
         two_processes=two_processes)[check](out, *rest)
