"""Config validation, immutability, the HParams pytree and derived loop counts."""

import dataclasses
import math

import pytest

from purempo.config import Config, HParams


def test_default_config_is_valid():
    """The defaults construct without error and keep the documented default env."""
    config = Config()
    assert config.env == "inverted_pendulum"
    assert config.num_iterations >= config.num_evals


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(sequence_length=1), "sequence_length"),
        (dict(batch_size=1_100_000), "batch_size"),  # > default replay_size 1,048,576
        (dict(num_envs=1, replay_size=100, batch_size=128), "batch_size"),
        (dict(epsilon=-0.1), "epsilon"),
        (dict(epsilon_mean=-1e-2), "epsilon_mean"),
        (dict(epsilon_std=-1e-4), "epsilon_std"),
        (dict(epsilon_policy=0.0), "epsilon_policy"),
        (dict(min_action_prob=-0.01), "min_action_prob"),
        (dict(min_action_prob=0.5), "min_action_prob"),
        (dict(observation_torso="cnn"), "observation_torso"),
        (dict(observation_torso="conv"), "observation_normalization"),  # its kernels cannot absorb per-pixel stats
        (dict(epsilon=0.0), "epsilon"),
        (dict(discount=1.0), "discount"),
        (dict(discount=-0.1), "discount"),
        (dict(retrace_lambda=1.5), "retrace_lambda"),
        (dict(num_envs=0), "num_envs"),
        # 256 envs need >= 256 * (sequence_length 8 + 1 + unroll_length 2) = 2816 slots.
        (dict(replay_size=2_560), "replay_size"),
        (dict(replay_size=262_200), "replay_size"),  # not a multiple of num_envs=256 (262,144 + 56)
        # 10 evals need at least one iteration (256 * 2 = 512 steps) each: 5120.
        (dict(total_steps=5_119), "total_steps"),
        # prefill 2048 = 4 iterations of 512 must leave some of the 10 iterations to learn.
        (dict(total_steps=5_120, prefill_steps=10 * 512), "prefill_steps"),
        # the first update needs sequence_length + 1 = 9 steps per env: 5 iterations of 2, prefill > 3 * 512.
        (dict(prefill_steps=0), "prefill_steps"),
        (dict(prefill_steps=3 * 512), "prefill_steps"),
        (dict(replay_obs_dtype="float16"), "replay_obs_dtype"),
        (dict(backend="nope"), "backend"),
        (dict(tau=0.0), "tau"),
        (dict(tau=1.5), "tau"),
        (dict(init_std=1e-3), "init_std"),  # == min_std
        (dict(init_std=0.1, min_std=0.2), "init_std"),
        (dict(policy_lr=float("nan")), "policy_lr"),
        (dict(critic_lr=float("nan")), "critic_lr"),
        (dict(dual_lr=float("inf")), "dual_lr"),
        (dict(min_alpha=0.0), "min_alpha"),
        (dict(min_alpha=-1e-8), "min_alpha"),
        (dict(min_alpha=float("nan")), "min_alpha"),
        (dict(alpha_gain=-0.1), "alpha_gain"),
        (dict(alpha_gain=float("inf")), "alpha_gain"),
        (dict(num_critics=0), "num_critics"),
        (dict(num_critics=2, critic_pessimism=-0.5), "critic_pessimism"),
        (dict(critic_pessimism=0.5), "critic_pessimism"),  # a spread needs an ensemble (num_critics > 1)
        (dict(policy_lr_decay_updates=-1.0), "policy_lr_decay_updates"),
        (dict(policy_lr_decay_updates=float("nan")), "policy_lr_decay_updates"),
        (dict(exploration_correlation=1.0), "exploration_correlation"),
        (dict(exploration_correlation=-0.1), "exploration_correlation"),
        (dict(exploration_correlation_from_step=-1.0), "exploration_correlation_from_step"),
        (dict(episode_length=0), "episode_length"),
        (dict(episode_length=-5), "episode_length"),
        (dict(antithetic_samples=True, num_action_samples=7), "num_action_samples"),  # pairs need an even N
        (dict(critic_head="c51"), "critic_head"),
        (dict(critic_head="hl_gauss"), "reward_range"),  # the support is built from the reward bounds
        (dict(critic_head="categorical", reward_range=(0.0, 1.0), num_critics=2, critic_pessimism=1.0),
         "critic_pessimism"),
        (dict(critic_bins=1), "critic_bins"),
        (dict(critic_head="hl_gauss", reward_range=(0.0, 1.0), critic_bins=7), "critic_bins"),  # 4σ margins need 8σ
        (dict(hl_gauss_sigma=0.0), "hl_gauss_sigma"),
        (dict(reward_range=(1.0, 1.0)), "reward_range"),
        (dict(reward_range=(0.0, float("inf"))), "reward_range"),
        (dict(reward_range=(0.0,)), "reward_range"),
    ],
)
def test_invalid_field_raises_value_error_naming_it(changes, field):
    """Each invalid value raises ValueError whose message names the offending field."""
    with pytest.raises(ValueError, match=rf"\binvalid {field}="):
        Config(**changes)


def test_the_fewest_critic_bins_each_head_accepts():
    """HL-Gauss needs more than 1 + 8σ atoms (a 4σ margin each side, at least one bin between); categorical 2."""
    assert Config(critic_head="hl_gauss", reward_range=(0.0, 1.0), critic_bins=8).critic_bins == 8
    assert Config(critic_head="hl_gauss", reward_range=(0.0, 1.0), critic_bins=18, hl_gauss_sigma=2.0)
    with pytest.raises(ValueError, match="invalid critic_bins=17"):
        Config(critic_head="hl_gauss", reward_range=(0.0, 1.0), critic_bins=17, hl_gauss_sigma=2.0)
    assert Config(critic_head="categorical", reward_range=(0.0, 1.0), critic_bins=2).critic_bins == 2


def test_episode_length_defaults_to_the_envs_own_and_an_explicit_one_is_kept():
    """None (the default) means the env's own time limit, resolved when the trainer is built; a stored or
    explicit value (old config.json files hold 1000) is kept as given; the error for a bad one is one line."""
    assert Config().episode_length is None
    assert Config(episode_length=1000).episode_length == 1000 and Config(episode_length=1).episode_length == 1
    with pytest.raises(ValueError) as info:
        Config(episode_length=0)
    assert "\n" not in str(info.value)


def test_boundary_values_are_accepted():
    """Values right at the allowed limits are valid (independent check of the inequalities above)."""
    Config(replay_size=2_816)
    Config(prefill_steps=3 * 512 + 1)
    Config(replay_obs_dtype="bfloat16")
    Config(total_steps=5_120)
    Config(discount=0.0, retrace_lambda=1.0, tau=1.0, sequence_length=2)
    Config(num_envs=1, replay_size=128, batch_size=128)


def test_unknown_env_is_reported_when_the_trainer_is_built_with_the_closest_names():
    """Config(env='CheetahRn') is accepted (validating it would import a simulator); building its trainer raises
    one short ValueError line with the closest names of both families and where the full list is."""
    from purempo import make_trainer

    config = Config(env="CheetahRn")
    with pytest.raises(ValueError) as info:
        make_trainer(config)
    message = str(info.value)
    assert "'CheetahRn'" in message and "\n" not in message and len(message) < 200
    assert "did you mean CheetahRun or halfcheetah?" in message and "purempo envs" in message


def test_defaults_are_the_pendulum_preset_and_every_preset_preserves_outputs():
    """Config() is the inverted_pendulum preset; every preset keeps output-preserving normalisation on; the α
    floor travels in HParams (vmappable)."""
    from purempo.presets import PRESETS, preset

    config = Config()
    assert config == preset("inverted_pendulum")
    assert all(preset(env).obs_norm_preserves_outputs for env in PRESETS)
    assert config.hparams.min_alpha == config.min_alpha > 0.0


def test_config_is_frozen():
    """Assigning to a field raises; replace returns a new validated config."""
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.num_envs = 8
    assert config.num_envs == 256
    other = config.replace(num_envs=8, replay_size=8_192)
    assert other.num_envs == 8 and config.num_envs == 256
    with pytest.raises(ValueError, match="sequence_length"):
        config.replace(sequence_length=1)


NON_DEFAULT = dict(
    num_envs=8,
    unroll_length=3,
    prefill_steps=50,
    replay_size=1_000,
    total_steps=1_000,
    num_evals=3,
    batch_size=16,
    sequence_length=8,
    discount=0.97,
    retrace_lambda=0.9,
    epsilon=0.2,
    epsilon_mean=3e-3,
    epsilon_std=2e-5,
    epsilon_penalty=5e-4,
    policy_lr=1e-4,
    critic_lr=2e-4,
    dual_lr=5e-3,
    tau=0.01,
    init_temperature=2.0,
    init_alpha_mean=3.0,
    init_alpha_std=300.0,
    min_alpha=1e-6,
    alpha_gain=0.3,
    num_critics=3,
    critic_pessimism=0.7,
    policy_lr_decay_updates=5000.0,
    exploration_correlation=0.6,
    exploration_correlation_from_step=20_000.0,
    reward_scale=0.5,
    hl_gauss_sigma=1.5,
    obs_norm_preserves_outputs=False,
    epsilon_policy=3e-3,
    min_action_prob=0.02,
)


def test_hparams_is_a_namedtuple_of_the_float_fields():
    """hparams holds exactly the float hyper-parameters, as Python floats equal to the fields."""
    config = Config(**NON_DEFAULT)
    hparams = config.hparams
    assert isinstance(hparams, HParams) and isinstance(hparams, tuple)
    expected_fields = {
        "discount", "retrace_lambda", "epsilon", "epsilon_mean", "epsilon_std", "epsilon_penalty", "policy_lr",
        "critic_lr", "dual_lr", "tau", "init_temperature", "init_alpha_mean", "init_alpha_std", "min_alpha",
        "alpha_gain", "critic_pessimism", "policy_lr_decay_updates", "exploration_correlation",
        "exploration_correlation_from_step", "reward_scale", "hl_gauss_sigma", "epsilon_policy",
    }
    assert set(hparams._fields) == expected_fields
    assert "obs_norm_preserves_outputs" not in hparams._fields  # a static switch, not a float
    for name in hparams._fields:
        value = getattr(hparams, name)
        assert type(value) is float, name
        assert value == NON_DEFAULT[name], name


def test_derived_properties_match_hand_computation():
    """Loop counts for 8 envs x unroll 3, prefill 50, total 1000, 3 evals, replay 1000."""
    config = Config(**NON_DEFAULT)
    assert config.steps_per_iteration == 24  # 8 * 3
    assert config.capacity_per_env == 125  # 1000 // 8
    assert config.prefill_iterations == 3  # ceil(50 / 24)
    # 1000 // 24 = 41 iterations in all, 41 // 3 = 13 per evaluation chunk (prefill included).
    assert config.iterations_per_eval == 13
    assert config.num_iterations == 39
    assert config.env_steps == 39 * 24 == 936
    assert config.env_steps <= config.total_steps
    assert math.isclose(config.hparams.discount, 0.97)


def test_concerns_partition_the_fields_in_the_order_the_class_declares_them():
    from purempo.config import CONCERNS

    names = [field.name for field in dataclasses.fields(Config)]
    assert [name for fields in CONCERNS.values() for name in fields] == names  # each once, sections in order
    assert tuple(CONCERNS) == ("env", "replay", "networks", "mpo", "run")


def test_concern_reads_one_section_and_rejects_unknown_names():
    config = Config(batch_size=32, sequence_length=4)
    assert config.concern("replay") == dict(replay_size=config.replay_size, prefill_steps=config.prefill_steps,
                                            batch_size=32, sequence_length=4, replay_obs_dtype="float32")
    with pytest.raises(ValueError, match="unknown concern 'learner': must be one of"):
        config.concern("learner")
