"""One validation path for the Python object, the dict/JSON form and the command line:
types, finiteness and ranges, each refusal a ValueError naming field, value and rule."""

import json
import math
import re
from dataclasses import fields

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import TrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer

from orthosae_plugin import OrthoContrastiveTrainingSAE, OrthoContrastiveTrainingSAEConfig
from orthosae_plugin.cli import parse_train_args
from helpers import runner_cfg

nan, inf = math.nan, math.inf


def build_cfg(**kwargs) -> OrthoContrastiveTrainingSAEConfig:
    return OrthoContrastiveTrainingSAEConfig(**{"d_in": 8, "d_sae": 16, **kwargs})


def from_dict(**kwargs) -> OrthoContrastiveTrainingSAEConfig:
    return TrainingSAEConfig.from_dict({"architecture": "ortho_contrastive", "d_in": 8, "d_sae": 16, **kwargs})


# Each case failed before this change with something other than a ValueError naming the
# field (TypeError, or a crash at step 0), or was accepted although it cannot train.
BAD_VALUES = [
    ({"ortho_coefficient": "1000"}, r"ortho_coefficient='1000' is invalid: it must be a finite number >= 0 .*not a str"),
    ({"ortho_coefficient": inf}, r"ortho_coefficient=inf is invalid: it must be a finite number"),
    ({"ortho_coefficient": True}, r"ortho_coefficient=True is invalid: .*not a bool"),
    ({"ortho_anneal_steps": nan}, r"ortho_anneal_steps=nan is invalid: it must be an integer >= 1, or None"),
    ({"ortho_anneal_steps": inf}, r"ortho_anneal_steps=inf is invalid: it must be an integer"),
    ({"ortho_anneal_steps": 100.0}, r"ortho_anneal_steps=100.0 is invalid: it must be an integer .*not a float"),
    ({"contrastive_temperature": inf}, r"contrastive_temperature=inf is invalid: it must be a finite number"),
    ({"contrastive_temperature": nan}, r"contrastive_temperature=nan is invalid"),
    ({"contrastive_temperature": 1e-9}, r"contrastive_temperature=1e-09 is invalid: it must be > 0, at least 0.0001"),
    ({"contrastive_coefficient": nan}, r"contrastive_coefficient=nan is invalid"),
    ({"l1_coefficient": inf}, r"l1_coefficient=inf is invalid"),
    ({"lp_norm": 0.0}, r"lp_norm=0.0 is invalid: it must be > 0"),
    ({"sparsity_base": "topk", "k": 4, "aux_loss_coefficient": inf}, r"aux_loss_coefficient=inf is invalid: it must be a finite number"),
    ({"sparsity_base": "batchtopk", "k": nan}, r"k=nan is invalid: it must be a finite number"),
    ({"sparsity_base": "batchtopk", "k": 4, "topk_threshold_lr": nan}, r"topk_threshold_lr=nan is invalid"),
    ({"ortho_threshold_start": nan}, r"ortho_threshold_start=nan is invalid: it must be a finite number in \[0, 1\]"),
    ({"ortho_margin": inf}, r"ortho_margin=inf is invalid"),
    ({"ortho_max_pair_fraction": nan}, r"ortho_max_pair_fraction=nan is invalid"),
    ({"ortho_block_size": 2.5}, r"ortho_block_size=2.5 is invalid: it must be an integer >= 1 .*not a float"),
    ({"ortho_block_size": 512.0}, r"ortho_block_size=512.0 is invalid: it must be an integer"),
    ({"ortho_chunk_size": 8.0}, r"ortho_chunk_size=8.0 is invalid: it must be an integer >= 2"),
    ({"ortho_block_size": True}, r"ortho_block_size=True is invalid: it must be an integer .*not a bool"),
    ({"projection_dim": True}, r"projection_dim=True is invalid: it must be an integer >= 1, or None"),
    ({"projection_dim": "None"}, r"projection_dim='None' is invalid: .*not a str"),
    ({"contrastive_warm_up_steps": 10.5}, r"contrastive_warm_up_steps=10.5 is invalid: it must be an integer"),
    ({"ortho_rescan_every": "10"}, r"ortho_rescan_every='10' is invalid"),
    ({"projection_seed": -1}, r"projection_seed=-1 is invalid: it must be in \[0, 2\*\*32\)"),
    ({"d_sae": 0}, r"d_sae=0 is invalid: it must be >= 1"),
    ({"d_sae": 1}, r"d_sae=1 is invalid: the decoder-orthogonality penalty .* needs >= 2 latents"),
    ({"d_in": 0}, r"d_in=0 is invalid: it must be >= 1"),
    ({"d_in": "64"}, r"d_in='64' is invalid: it must be an integer"),
    ({"dtype": "float8"}, r"dtype='float8' is invalid: allowed dtypes are float32, float64, float16, bfloat16"),
    ({"device": "banana"}, r"device='banana' is invalid: it must be a torch device name"),
    ({"apply_b_dec_to_input": "yes"}, r"apply_b_dec_to_input='yes' is invalid: it must be True or False"),
    ({"decoder_init_norm": nan}, r"decoder_init_norm=nan is invalid"),
    ({"ortho_mode": 3}, r"ortho_mode=3 is invalid: allowed modes are"),
    ({"ortho_matmul_dtype": "float16"}, r"ortho_matmul_dtype='float16' is invalid: allowed dtypes are float32, bfloat16"),
    ({"ortho_lazy_mode": "stale"}, r"ortho_lazy_mode='stale' is invalid: allowed modes are weighted, reuse"),
    ({"sparsity_base": None}, r"sparsity_base=None is invalid: allowed bases are"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_VALUES)
def test_bad_types_and_non_finite_values_are_refused_by_the_python_object(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_cfg(**kwargs)


@pytest.mark.parametrize(("kwargs", "message"), BAD_VALUES)
def test_bad_types_and_non_finite_values_are_refused_by_the_dict_form(kwargs, message):
    with pytest.raises(ValueError, match=message):
        from_dict(**kwargs)


def test_json_numbers_and_numpy_scalars_are_accepted_and_stored_as_python_numbers():
    import numpy as np

    cfg = from_dict(ortho_coefficient=1000, ortho_block_size=np.int64(64), contrastive_temperature=np.float32(0.5))
    assert cfg.ortho_coefficient == 1000
    assert type(cfg.ortho_block_size) is int and cfg.ortho_block_size == 64
    assert type(cfg.contrastive_temperature) is float
    json.dumps(cfg.to_dict())  # serialisable


def test_a_zero_batch_is_refused_by_name_not_by_zero_division():
    # Before: ZeroDivisionError from the budget hook.
    with pytest.raises(ValueError, match=r"train_batch_size_tokens=0 is invalid: the training batch must be an integer >= 1"):
        runner_cfg(build_cfg(), train_batch_size_tokens=0)


def test_a_zero_batch_is_refused_by_the_trainer_too():
    sae = OrthoContrastiveTrainingSAE(build_cfg())
    with pytest.raises(ValueError, match=r"train_batch_size_samples=0 is invalid"):
        SAETrainer(cfg=SAETrainerConfig(total_training_samples=100, train_batch_size_samples=0, lr_end=1e-4),
                   sae=sae, data_provider=iter(()))


CLI_BASE = ["--architecture", "ortho_contrastive", "--d_in", "8", "--d_sae", "16",
            "--training_tokens", str(4096 * 2000), "--train_batch_size_tokens", "4096"]


@pytest.mark.parametrize("field", ["projection_dim", "ortho_anneal_steps"])
@pytest.mark.parametrize("spelling", ["None", "none", "null"])
def test_the_command_line_can_say_none(field, spelling):
    # Before: "argument --projection_dim: invalid int value: 'None'".
    cfg = parse_train_args([*CLI_BASE, f"--{field}", spelling])
    if field == "projection_dim":
        assert cfg.sae.projection_dim is None
    else:
        assert cfg.sae.ortho_anneal_steps == 2000 and cfg.sae.ortho_anneal_steps_derived


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ortho_coefficient", "nan"], r"ortho_coefficient=nan is invalid"),
        (["--contrastive_temperature", "inf"], r"contrastive_temperature=inf is invalid"),
        (["--ortho_block_size", "2.5"], r"ortho_block_size: invalid int value: '2.5'"),
        (["--projection_dim", "0"], r"projection_dim=0 is invalid"),
        (["--train_batch_size_tokens", "0"], r"train_batch_size_tokens=0 is invalid"),
        (["--d_sae", "0"], r"d_sae=0 is invalid"),
    ],
)
def test_the_command_line_refuses_with_a_value_error_naming_the_field(args, message):
    with pytest.raises(ValueError, match=message):
        parse_train_args([*CLI_BASE, *args])


def test_orthosae_train_prints_the_error_and_exits_2(capsys):
    from orthosae_plugin.cli import train_main

    with pytest.raises(SystemExit) as exited:
        train_main([*CLI_BASE, "--ortho_anneal_steps", "nan"])
    assert exited.value.code == 2
    assert "ortho_anneal_steps: invalid" in capsys.readouterr().err


# --- the property: accepted and trains a step, or refused naming a field ----------------

CONFIG_FIELDS = {f.name for f in fields(OrthoContrastiveTrainingSAEConfig)}
RUN_FIELDS = {"train_batch_size_samples", "total_training_samples", "train_batch_size_tokens", "training_tokens"}

floats = st.floats  # shorthand
BAD_REAL = st.sampled_from([nan, inf, -inf, -1.0, "0.5", True, None])
BAD_INT = st.sampled_from([0, -1, 2.5, 4.0, nan, inf, "4", True, None])


def valid_and_bad(valid, bad):
    return valid, bad


FIELD_SPACE = {  # field: (valid values, bad values)
    "d_in": (st.sampled_from([1, 4, 8]), BAD_INT),
    "d_sae": (st.sampled_from([2, 8, 16]), BAD_INT),
    "ortho_coefficient": (st.sampled_from([0.0, 1.0, 1000]) | floats(0, 2000), BAD_REAL),
    "contrastive_coefficient": (st.sampled_from([0.0, 0.3]) | floats(0, 1), BAD_REAL),
    "ortho_threshold_start": (floats(0.3, 1), BAD_REAL | st.just(1.5)),
    "ortho_threshold_end": (floats(0, 0.3), BAD_REAL | st.just(1.5)),
    "ortho_anneal_steps": (st.none() | st.integers(1, 100), BAD_INT),
    "ortho_mode": (st.sampled_from(["exact", "chunked", "close_pairs"]), st.sampled_from(["fast", 1, None])),
    "ortho_block_size": (st.integers(1, 32), BAD_INT),
    "ortho_matmul_dtype": (st.sampled_from(["float32", "bfloat16"]), st.sampled_from(["float16", 16, None])),
    "ortho_chunk_size": (st.integers(2, 32), BAD_INT | st.just(1)),
    "ortho_margin": (floats(0, 1), BAD_REAL),
    "ortho_rescan_every": (st.integers(1, 5), BAD_INT),
    "ortho_max_pair_fraction": (floats(0.01, 1), BAD_REAL | st.just(0.0)),
    "ortho_max_pairs_per_latent": (floats(0.5, 512), BAD_REAL | st.just(0.0)),
    "ortho_lazy_every": (st.integers(1, 4), BAD_INT),
    "ortho_lazy_mode": (st.sampled_from(["weighted", "reuse"]), st.sampled_from(["stale", 1, None])),
    "contrastive_warm_up_steps": (st.integers(0, 2), BAD_INT.filter(lambda v: v != 0)),
    "projection_dim": (st.none() | st.integers(1, 8), BAD_INT.filter(lambda v: v is not None)),
    "contrastive_temperature": (floats(1e-3, 10), BAD_REAL | st.just(0.0)),
    "projection_seed": (st.integers(0, 1000), st.sampled_from([-1, 2**40, 1.5, "0"])),
    "dtype": (st.sampled_from(["float32", "bfloat16", "float64"]), st.sampled_from(["float8", 32, None])),
    "device": (st.just("cpu"), st.sampled_from(["banana", 0, None])),
}
NOT_ON_THE_COMMAND_LINE = {"dtype", "device"}  # SAELens's runner has flags of those names
BASE_FIELD_SPACE = {
    "relu_l1": {"l1_coefficient": (floats(0, 10), BAD_REAL), "lp_norm": (floats(0.5, 2), BAD_REAL | st.just(0.0))},
    "topk": {"k": (st.integers(1, 2), BAD_REAL | st.just(2.5)), "aux_loss_coefficient": (floats(0, 2), BAD_REAL)},
    "batchtopk": {"k": (floats(0.5, 2), BAD_REAL), "topk_threshold_lr": (floats(0.5, 1), BAD_REAL | st.just(0.0))},
    "matryoshka_batchtopk": {
        "k": (floats(0.5, 2), BAD_REAL),
        "topk_threshold_lr": (floats(0.5, 1), BAD_REAL | st.just(0.0)),
        "matryoshka_widths": (st.sampled_from([[1], [1, 2]]), st.sampled_from([[], [2, 1], [0, 2], [1.5], "1,2", 4, None])),
        "matryoshka_ortho_pairs": (st.sampled_from(["all", "within_groups"]), st.sampled_from(["none", 1, None])),
    },
}


@st.composite
def configs(draw, n_bad_max=2):
    """Keyword arguments of a config (all valid, then 0 to ``n_bad_max`` fields
    corrupted) and the run's batch and budget."""
    base = draw(st.sampled_from(sorted(BASE_FIELD_SPACE)))
    space = {**FIELD_SPACE, **BASE_FIELD_SPACE[base]}
    always = {"contrastive_warm_up_steps"} | ({"k"} if base != "relu_l1" else set())
    always |= {"matryoshka_widths"} if base == "matryoshka_batchtopk" else set()
    names = sorted(always | draw(st.sets(st.sampled_from(sorted(space)), max_size=8)))
    kwargs = {name: draw(space[name][0]) for name in names}
    kwargs["sparsity_base"] = base
    for name in draw(st.lists(st.sampled_from(sorted(space)), max_size=n_bad_max, unique=True)):
        kwargs[name] = draw(space[name][1])
    if draw(st.booleans()) and "ortho_threshold_start" in kwargs and "ortho_threshold_end" in kwargs:
        kwargs["ortho_threshold_start"], kwargs["ortho_threshold_end"] = kwargs["ortho_threshold_end"], kwargs["ortho_threshold_start"]
    batch = draw(st.sampled_from([8, 4, 2, 8, 4, 1, 0, -1]))
    budget = draw(st.sampled_from([16, 8, 4, 16, 2, 1, 0])) * max(batch, 1)
    return kwargs, batch, budget


def names_a_field(message: str) -> bool:
    return any(re.search(rf"\b{name}\b", message) for name in CONFIG_FIELDS | RUN_FIELDS)


def trains_a_step(sae_cfg, batch: int, budget: int, trainer_cfg: SAETrainerConfig | None = None) -> None:
    sae = OrthoContrastiveTrainingSAE(sae_cfg)
    trainer_cfg = trainer_cfg or SAETrainerConfig(
        total_training_samples=budget, train_batch_size_samples=batch, lr_end=1e-4
    )
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=iter(()))
    x = torch.randn(trainer_cfg.train_batch_size_samples, sae_cfg.d_in, generator=torch.Generator().manual_seed(0))
    output = trainer.step(x)
    assert torch.isfinite(output.loss), output.losses
    assert sae.current_step() == 1
    assert sae.cfg.ortho_anneal_steps is not None


def accepted_and_trains_or_refused_by_name(build, batch, budget) -> str:
    try:
        sae_cfg, trainer_cfg = build()
        trains_a_step(sae_cfg, batch, budget, trainer_cfg)
    except ValueError as error:
        assert names_a_field(str(error)), f"refusal names no field: {error}"
        return "refused"
    return "trained"


FUZZ = settings(max_examples=300, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@FUZZ
@given(configs())
def test_fuzz_python_object_is_accepted_and_trains_a_step_or_refused_naming_a_field(case):
    kwargs, batch, budget = case
    accepted_and_trains_or_refused_by_name(lambda: (build_cfg(**kwargs), None), batch, budget)


@FUZZ
@given(configs())
def test_fuzz_dict_form_is_accepted_and_trains_a_step_or_refused_naming_a_field(case):
    kwargs, batch, budget = case
    as_json = json.dumps(kwargs, default=str)  # what a JSON file can hold (nan/inf included)
    accepted_and_trains_or_refused_by_name(lambda: (from_dict(**json.loads(as_json)), None), batch, budget)


@settings(FUZZ, max_examples=40)
@given(configs())
def test_fuzz_command_line_is_accepted_and_trains_a_step_or_refused_naming_a_field(case):
    kwargs, batch, budget = case
    args = list(CLI_BASE[:6])
    kwargs = {name: value for name, value in kwargs.items() if name not in NOT_ON_THE_COMMAND_LINE}
    for name, value in {**kwargs, "training_tokens": budget, "train_batch_size_tokens": batch}.items():
        args += [f"--{name}", str(value)]

    def build():
        cfg = parse_train_args(args)
        return cfg.sae, cfg.to_sae_trainer_config()

    accepted_and_trains_or_refused_by_name(build, batch, budget)


def test_the_fuzzed_space_holds_both_outcomes():
    """The property tests would pass vacuously if every config were refused."""
    outcomes = {"trained": 0, "refused": 0}

    @settings(FUZZ, max_examples=60)
    @given(configs(n_bad_max=1))
    def count(case):
        kwargs, batch, budget = case
        outcomes[accepted_and_trains_or_refused_by_name(lambda: (build_cfg(**kwargs), None), batch, budget)] += 1

    count()
    assert outcomes["trained"] >= 10 and outcomes["refused"] >= 10, outcomes


def test_a_zero_latent_toy_run_is_refused_before_anything_is_built():
    # Before: `orthosae-demo --d-sae 0` saved a 0-latent SAE and exited 0.
    from orthosae_plugin.toy import ToySetup, tiny_runner_config

    with pytest.raises(ValueError, match=r"d_sae=0 is invalid: it must be >= 1"):
        tiny_runner_config(ToySetup(sae_kwargs={"d_sae": 0}), training_tokens=256 * 2000)
