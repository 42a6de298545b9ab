"""The ortho_contrastive architecture: equivalence with SAELens standard, schedules,
validation, saving, and the NaN guard."""

import copy
import importlib
import json

import pytest
import torch
from sae_lens import SAE, LanguageModelSAERunnerConfig
from sae_lens.registry import get_sae_class, get_sae_training_class
from sae_lens.saes.sae import TrainStepInput
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.training.optim import CoefficientScheduler
from torch.testing import assert_close

import orthosae_plugin
from helpers import random_batch, runner_cfg
from helpers import step_input as make_step_input
from orthosae_plugin import OrthoContrastiveTrainingSAE, OrthoContrastiveTrainingSAEConfig
from orthosae_plugin.cli import parse_train_args
from orthosae_plugin.contrastive import self_contrastive_loss
from orthosae_plugin.orthogonality import ortho_penalty_exact


def build_cfg(**kwargs) -> OrthoContrastiveTrainingSAEConfig:
    defaults = dict(d_in=64, d_sae=256, ortho_anneal_steps=1000)
    return OrthoContrastiveTrainingSAEConfig(**{**defaults, **kwargs})


def step_input(x, l1=0.5, ortho=0.0, contrastive=0.0, logging=False) -> TrainStepInput:
    return make_step_input(x, {"l1": l1, "ortho": ortho, "contrastive": contrastive}, logging=logging)


def at_step(sae, step):
    sae.n_steps_trained.fill_(step)
    return sae


def batch(B=32, d=64, seed=0):
    return random_batch(B, d, seed)


def grads(sae):
    return {name: p.grad.clone() for name, p in sae.named_parameters()}


# --- registration -------------------------------------------------------------------


def test_import_registers_the_architecture_for_training_and_loading():
    assert get_sae_training_class("ortho_contrastive") == (
        OrthoContrastiveTrainingSAE,
        OrthoContrastiveTrainingSAEConfig,
    )
    assert get_sae_class("ortho_contrastive")[0].__name__ == "OrthoContrastiveSAE"


def test_registration_is_idempotent_across_imports_and_reloads():
    orthosae_plugin.register()
    orthosae_plugin.register()
    reloaded = importlib.reload(orthosae_plugin)
    cls, cfg_cls = get_sae_training_class("ortho_contrastive")
    assert cls is reloaded.OrthoContrastiveTrainingSAE
    assert cfg_cls is reloaded.OrthoContrastiveTrainingSAEConfig


# --- equivalence with SAELens standard -----------------------------------------------


def test_with_extra_coefficients_at_zero_it_matches_standard_exactly():
    torch.manual_seed(0)
    ours = OrthoContrastiveTrainingSAE(build_cfg(ortho_coefficient=0.0, contrastive_coefficient=0.0))
    theirs = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=64, d_sae=256))
    theirs.load_state_dict({k: v for k, v in ours.state_dict().items() if k in theirs.state_dict()})
    x = batch()

    out_ours = ours.training_forward_pass(step_input(x, l1=0.5))
    out_theirs = theirs.training_forward_pass(step_input(x, l1=0.5))
    out_ours.loss.backward()
    out_theirs.loss.backward()

    assert_close(out_ours.sae_out, out_theirs.sae_out, rtol=0, atol=0)
    assert_close(out_ours.feature_acts, out_theirs.feature_acts, rtol=0, atol=0)
    assert_close(out_ours.loss, out_theirs.loss, rtol=0, atol=0)
    for name, value in out_theirs.losses.items():
        assert_close(out_ours.losses[name], value, rtol=0, atol=0)
    assert out_ours.losses["ortho_loss"].item() == 0.0
    assert out_ours.losses["contrastive_loss"].item() == 0.0
    g_ours, g_theirs = grads(ours), grads(theirs)
    assert g_ours.keys() == g_theirs.keys()
    for name in g_theirs:
        assert_close(g_ours[name], g_theirs[name], rtol=0, atol=0)
    assert_close(ours.encode(x), theirs.encode(x), rtol=0, atol=0)


def test_with_coefficients_on_the_loss_is_standard_plus_the_two_named_terms():
    torch.manual_seed(0)
    sae = OrthoContrastiveTrainingSAE(build_cfg())
    x = batch()
    out = at_step(sae, 300).training_forward_pass(step_input(x, ortho=2.0, contrastive=0.2))
    tau = sae.ortho_threshold_at(300)
    D = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    assert 300 % sae.cfg.ortho_lazy_every == 0  # a step that computes the (lazy) ortho term
    want_ortho = 2.0 * ortho_penalty_exact(D, tau)  # logged: one step's term (its gradient: r steps')
    want_con = 0.2 * self_contrastive_loss(x, out.sae_out, 0.1, sae.projection)
    assert set(out.losses) == {"mse_loss", "l1_loss", "ortho_loss", "contrastive_loss"}
    assert_close(out.losses["ortho_loss"], want_ortho)
    assert_close(out.losses["contrastive_loss"], want_con)
    assert out.losses["ortho_loss"] > 0  # random decoders have pairs above tau at d=64
    assert_close(out.loss, sum(out.losses.values()))


def test_exact_similarity_baseline_has_no_projection():
    sae = OrthoContrastiveTrainingSAE(build_cfg(projection_dim=None))
    assert sae.projection is None
    out = sae.training_forward_pass(step_input(batch(), contrastive=0.3))
    assert_close(out.losses["contrastive_loss"], 0.3 * self_contrastive_loss(batch(), out.sae_out, 0.1))


def test_each_training_step_advances_the_schedule_clock():
    sae = OrthoContrastiveTrainingSAE(build_cfg())
    for _ in range(3):
        sae.training_forward_pass(step_input(batch(), ortho=1.0))
    assert sae.current_step() == 3


def test_chunked_mode_is_deterministic_per_step_and_varies_across_steps():
    sae = OrthoContrastiveTrainingSAE(build_cfg(ortho_mode="chunked", ortho_chunk_size=16))
    x = batch()
    a = at_step(sae, 3).training_forward_pass(step_input(x, ortho=1.0)).losses["ortho_loss"]
    b = at_step(sae, 3).training_forward_pass(step_input(x, ortho=1.0)).losses["ortho_loss"]
    c = sae.training_forward_pass(step_input(x, ortho=1.0)).losses["ortho_loss"]  # step 4
    assert a.item() == b.item()
    assert a.item() != c.item()


# --- schedules -------------------------------------------------------------------------


@pytest.mark.parametrize(("step", "tau"), [(0, 0.3), (500, 0.175), (1000, 0.05), (1700, 0.05)])
def test_threshold_schedule(step, tau):
    sae = OrthoContrastiveTrainingSAE(build_cfg(ortho_anneal_steps=1000))
    assert sae.ortho_threshold_at(step) == pytest.approx(tau)


def test_contrastive_weight_is_warmed_up_by_saelens_scheduler():
    sae = OrthoContrastiveTrainingSAE(build_cfg())
    coeff = sae.get_coefficients()["contrastive"]
    scheduler = CoefficientScheduler(warm_up_steps=coeff.warm_up_steps, final_value=coeff.value)
    # SAELens reads scheduler.value for step t, then steps the scheduler.
    values = []
    for _ in range(1200):
        values.append(scheduler.value)
        scheduler.step()
    assert values[0] == 0.0
    assert values[500] == pytest.approx(0.15)
    assert all(v == pytest.approx(0.3) for v in values[1000:])


def test_missing_horizon_outside_a_runner_is_a_clear_error():
    sae = OrthoContrastiveTrainingSAE(build_cfg(ortho_anneal_steps=None))
    with pytest.raises(ValueError, match="ortho_anneal_steps=None"):
        sae.training_forward_pass(step_input(batch(), ortho=1.0))


# --- logging metrics -----------------------------------------------------------------


def test_logging_steps_carry_the_threshold_and_the_orthogonality_diagnostics():
    sae = OrthoContrastiveTrainingSAE(build_cfg())
    quiet = at_step(sae, 500).training_forward_pass(step_input(batch(), ortho=1.0))
    logged = at_step(sae, 500).training_forward_pass(step_input(batch(), ortho=1.0, logging=True))
    assert quiet.metrics == {}
    assert logged.metrics["ortho_threshold"] == pytest.approx(0.175)
    D = (sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)).detach()
    C = (D @ D.T).abs().fill_diagonal_(0)
    assert logged.metrics["decoder_max_abs_cos"] == pytest.approx(C.max().item(), rel=1e-5)
    assert 0 < logged.metrics["decoder_frac_pairs_above_threshold"] < 1


# --- NaN guard -----------------------------------------------------------------------


def test_a_nan_loss_stops_training_naming_the_term_and_the_step():
    sae = at_step(OrthoContrastiveTrainingSAE(build_cfg()), 17)
    x = batch()
    x[3, 5] = float("nan")
    before = copy.deepcopy(sae.state_dict())
    with pytest.raises(FloatingPointError, match=r"step 17: .*mse_loss=nan"):
        sae.training_forward_pass(step_input(x, ortho=1.0, contrastive=0.3))
    for key, value in sae.state_dict().items():
        assert torch.equal(value, before[key])


def test_an_inf_in_the_ortho_term_is_named():
    sae = OrthoContrastiveTrainingSAE(build_cfg())
    with pytest.raises(FloatingPointError, match=r"ortho_loss=inf"):
        at_step(sae, 4).training_forward_pass(step_input(batch(), ortho=float("inf")))  # a lazy ortho step


# --- saving --------------------------------------------------------------------------


def test_inference_model_is_a_standard_sae_without_training_buffers(tmp_path):
    sae = OrthoContrastiveTrainingSAE(build_cfg())
    sae.n_steps_trained.fill_(123)
    sae.save_inference_model(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "standard"
    assert cfg["metadata"]["training_steps"] == 123
    assert cfg["metadata"]["training_architecture"] == "ortho_contrastive"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    loaded = SAE.load_from_disk(tmp_path)
    assert type(loaded).__name__ == "StandardSAE"
    assert "projection" not in loaded.state_dict()
    x = batch()
    assert_close(loaded.encode(x), sae.encode(x))
    assert_close(loaded.decode(loaded.encode(x)), sae.decode(sae.encode(x)))


def test_training_checkpoint_keeps_the_projection_and_opens_for_inference(tmp_path):
    sae = OrthoContrastiveTrainingSAE(build_cfg(projection_seed=11))
    sae.save_model(tmp_path)
    with pytest.raises(ValueError, match=r"projection_seed: 11 -> 99"):  # a resume that changes the seed
        OrthoContrastiveTrainingSAE(build_cfg(projection_seed=99)).load_weights_from_checkpoint(tmp_path)
    fresh = OrthoContrastiveTrainingSAE(build_cfg(projection_seed=99, resume_allow_changes=["projection_seed"]))
    fresh.load_weights_from_checkpoint(tmp_path)
    assert torch.equal(fresh.projection, sae.projection)
    as_inference = SAE.load_from_disk(tmp_path)
    assert_close(as_inference.encode(batch()), sae.encode(batch()))


# --- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ortho_threshold_start": 1.5}, r"ortho_threshold_start=1.5 is invalid: .*\[0, 1\]"),
        ({"ortho_threshold_end": -0.1}, r"ortho_threshold_end=-0.1 is invalid: .*\[0, 1\]"),
        ({"ortho_threshold_start": 0.1, "ortho_threshold_end": 0.2}, r"ortho_threshold_start=0.1 is invalid: .*>= ortho_threshold_end=0.2"),
        ({"ortho_coefficient": -1.0}, r"ortho_coefficient=-1.0 is invalid: .*>= 0"),
        ({"contrastive_coefficient": -0.3}, r"contrastive_coefficient=-0.3 is invalid: .*>= 0"),
        ({"l1_coefficient": -2.0}, r"l1_coefficient=-2.0 is invalid: .*>= 0"),
        ({"projection_dim": 0}, r"projection_dim=0 is invalid: .*>= 1"),
        ({"contrastive_temperature": 0.0}, r"contrastive_temperature=0.0 is invalid: .*> 0"),
        ({"contrastive_temperature": -1.0}, r"contrastive_temperature=-1.0 is invalid: .*> 0"),
        ({"ortho_chunk_size": 1}, r"ortho_chunk_size=1 is invalid: .*>= 2"),
        ({"ortho_block_size": 0}, r"ortho_block_size=0 is invalid: .*>= 1"),
        ({"ortho_mode": "fast"}, r"ortho_mode='fast' is invalid: allowed modes are exact, chunked"),
        ({"ortho_anneal_steps": 0}, r"ortho_anneal_steps=0 is invalid: .*>= 1"),
        ({"contrastive_warm_up_steps": -5}, r"contrastive_warm_up_steps=-5 is invalid: .*>= 0"),
    ],
)
def test_bad_config_values_are_refused_with_field_value_and_rule(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_cfg(**kwargs)


def test_the_runner_config_fills_the_anneal_horizon_with_the_real_step_count():
    cfg = runner_cfg(build_cfg(ortho_anneal_steps=None), training_tokens=4096 * 2500 + 7)
    assert cfg.sae.ortho_anneal_steps == 2500
    assert cfg.sae.to_dict()["metadata"]["training_architecture_details"]["ortho_anneal_steps"] == 2500


def test_an_explicit_horizon_is_kept():
    assert runner_cfg(build_cfg(ortho_anneal_steps=777)).sae.ortho_anneal_steps == 777


def test_a_budget_shorter_than_the_warm_up_is_refused_with_the_arithmetic():
    # The experiment's run 3: 10,000 tokens at a batch of 4096 gives 2 steps.
    with pytest.raises(ValueError, match=r"training_tokens=10000 // train_batch_size_tokens=4096 = 2 training steps, fewer than contrastive_warm_up_steps=1000.*at least 4096000"):
        runner_cfg(build_cfg(ortho_anneal_steps=None), training_tokens=10_000)


def test_a_zero_step_budget_is_refused():
    with pytest.raises(ValueError, match=r"training_tokens=1000 // train_batch_size_tokens=4096 = 0 training steps, so nothing would be trained"):
        runner_cfg(build_cfg(contrastive_coefficient=0.0), training_tokens=1000)


def test_a_contrastive_batch_of_one_is_refused():
    with pytest.raises(ValueError, match=r"train batch size=1 is invalid"):
        runner_cfg(build_cfg(contrastive_warm_up_steps=0), training_tokens=100, train_batch_size_tokens=1)


def test_other_architectures_are_untouched_by_the_budget_hook():
    cfg = runner_cfg(StandardTrainingSAEConfig(d_in=64, d_sae=256), training_tokens=10)
    assert cfg.total_training_steps == 0


# --- the three ways to name the architecture ------------------------------------------


def test_dict_and_json_forms_build_the_same_config():
    python_cfg = runner_cfg(build_cfg(ortho_anneal_steps=None, projection_dim=64, ortho_mode="chunked"))
    as_json = json.loads(json.dumps(python_cfg.to_dict()))
    assert as_json["sae"]["architecture"] == "ortho_contrastive"
    from_dict = LanguageModelSAERunnerConfig.from_dict(as_json)
    assert from_dict.sae == python_cfg.sae
    assert isinstance(from_dict.sae, OrthoContrastiveTrainingSAEConfig)


def test_command_line_form_builds_the_same_config():
    args = [
        "--architecture", "ortho_contrastive", "--d_in", "64", "--d_sae", "256",
        "--model_name", "tiny", "--hook_name", "blocks.0.hook_resid_post",
        "--dataset_path", "in-memory", "--training_tokens", str(4096 * 2000),
        "--train_batch_size_tokens", "4096", "--context_size", "32",
        "--projection_dim", "64", "--ortho_mode", "chunked", "--contrastive_coefficient", "0.2",
        "--ortho_threshold_start", "0.25",
    ]
    cli_cfg = parse_train_args(args)
    python_cfg = runner_cfg(
        build_cfg(ortho_anneal_steps=None, projection_dim=64, ortho_mode="chunked",
                  contrastive_coefficient=0.2, ortho_threshold_start=0.25)
    )
    assert isinstance(cli_cfg.sae, OrthoContrastiveTrainingSAEConfig)
    assert cli_cfg.sae == python_cfg.sae
    assert cli_cfg.sae.ortho_anneal_steps == 2000


def test_command_line_refuses_a_short_budget_before_loading_a_model():
    with pytest.raises(ValueError, match="fewer than contrastive_warm_up_steps"):
        parse_train_args(["--architecture", "ortho_contrastive", "--d_in", "64", "--d_sae", "256",
                          "--training_tokens", "10000", "--train_batch_size_tokens", "4096"])
