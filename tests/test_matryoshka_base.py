"""ortho_contrastive on SAELens's Matryoshka BatchTopK (``sparsity_base=
"matryoshka_batchtopk"``): with the extra coefficients at 0 it is SAELens's own
``matryoshka_batchtopk`` bit for bit; the two terms add to its nested losses; the ortho
term's pair scope across the prefix groups; validation of its own fields; checkpoints
open as JumpReLU; the runner trains it, and the saved model loads without the plugin."""

import copy
import json
import textwrap
from dataclasses import MISSING, fields

import pytest
import torch
from safetensors.torch import load_file
from sae_lens import SAE, JumpReLUSAE, LanguageModelSAETrainingRunner
from sae_lens.registry import get_sae_training_class
from sae_lens.saes.jumprelu_sae import JumpReLUSAEConfig
from sae_lens.saes.matryoshka_batchtopk_sae import (
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
)
from sae_lens.saes.sae import TrainStepInput
from torch.testing import assert_close

from orthosae_plugin import (
    OrthoContrastiveMatryoshkaBatchTopKTrainingSAE,
    OrthoContrastiveTrainingSAE,
    OrthoContrastiveTrainingSAEConfig,
)
from orthosae_plugin.contrastive import self_contrastive_loss
from orthosae_plugin.ortho_contrastive import matryoshka_ortho_penalty
from orthosae_plugin.orthogonality import ortho_penalty_exact
from orthosae_plugin.toy import ToySetup, tiny_model, tiny_runner_config, tiny_token_dataset
from helpers import dead_mask, perturb, random_batch, runner_cfg, shared_state
from helpers import step_input as make_step_input

D_IN, D_SAE, K = 64, 256, 8
WIDTHS = [32, 64, 128, 256]
MAT = "matryoshka_batchtopk"


def build_cfg(**kwargs) -> OrthoContrastiveTrainingSAEConfig:
    defaults = dict(
        d_in=D_IN, d_sae=D_SAE, ortho_anneal_steps=1000, sparsity_base=MAT, k=K,
        matryoshka_widths=list(WIDTHS),
        ortho_lazy_every=1,  # the ortho term on every step (laziness: test_close_pairs_mode.py)
    )
    return OrthoContrastiveTrainingSAEConfig(**{**defaults, **kwargs})


def saelens_sae(**kwargs) -> MatryoshkaBatchTopKTrainingSAE:
    cfg = MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=D_IN, d_sae=D_SAE, **{"k": K, "matryoshka_widths": list(WIDTHS), **kwargs}
    )
    return MatryoshkaBatchTopKTrainingSAE(cfg)


def step_input(x, dead=None, ortho=0.0, contrastive=0.0) -> TrainStepInput:
    return make_step_input(x, {"ortho": ortho, "contrastive": contrastive}, dead)


def batch(B=32, seed=0):
    return random_batch(B, D_IN, seed)


# --- class and fields --------------------------------------------------------------------


def test_the_matryoshka_base_picks_saelens_own_class():
    cfg = build_cfg()
    registered_cls, _ = get_sae_training_class("ortho_contrastive")
    sae = registered_cls(cfg)  # how SAELens's runners build it
    assert type(sae) is OrthoContrastiveMatryoshkaBatchTopKTrainingSAE
    assert isinstance(sae, OrthoContrastiveTrainingSAE)
    assert isinstance(sae, MatryoshkaBatchTopKTrainingSAE)
    assert cfg.get_inference_config_class() is JumpReLUSAEConfig
    clone = copy.deepcopy(sae)
    assert type(clone) is OrthoContrastiveMatryoshkaBatchTopKTrainingSAE
    assert torch.equal(clone.W_enc, sae.W_enc)


def test_matryoshka_fields_carry_saelens_names_and_defaults():
    ours = {f.name: f for f in fields(OrthoContrastiveTrainingSAEConfig)}
    for f in fields(MatryoshkaBatchTopKTrainingSAEConfig):
        if f.default is not MISSING:
            assert ours[f.name].default == f.default, f.name
        elif f.default_factory is not MISSING:
            assert ours[f.name].default_factory() == f.default_factory(), f.name
    assert ours["matryoshka_ortho_pairs"].default == "all"


# --- equivalence with SAELens ------------------------------------------------------------


@pytest.mark.parametrize(
    "base_kwargs",
    [
        {},
        {"use_matryoshka_aux_loss": True},
        {"rescale_acts_by_decoder_norm": False, "aux_loss_coefficient": 0.5},
        {"topk_threshold_lr": 0.3, "k": 2.5, "matryoshka_widths": [16, 100, 256]},
    ],
)
def test_with_extra_coefficients_at_zero_it_is_saelens_own_matryoshka(base_kwargs, tmp_path):
    torch.manual_seed(0)
    ours = OrthoContrastiveTrainingSAE(
        build_cfg(ortho_coefficient=0.0, contrastive_coefficient=0.0, **base_kwargs)
    )
    torch.manual_seed(0)
    theirs = saelens_sae(**base_kwargs)
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    perturb(ours)
    shared_state(ours, theirs)
    assert set(ours.get_coefficients()) == set(theirs.get_coefficients()) | {"ortho", "contrastive"}

    for step in range(3):
        x, dead = batch(seed=step), dead_mask(D_SAE, seed=step)
        outs = []
        for sae in (ours, theirs):
            sae.zero_grad()
            out = sae.training_forward_pass(step_input(x, dead))
            out.loss.backward()
            outs.append(out)
        out_ours, out_theirs = outs
        assert_close(out_ours.sae_out, out_theirs.sae_out, rtol=0, atol=0)
        assert_close(out_ours.feature_acts, out_theirs.feature_acts, rtol=0, atol=0)
        assert_close(out_ours.hidden_pre, out_theirs.hidden_pre, rtol=0, atol=0)
        assert set(out_ours.losses) == set(out_theirs.losses) | {"ortho_loss", "contrastive_loss"}
        widths = ours.cfg.matryoshka_widths
        assert {f"inner_mse_loss_{w}" for w in widths[:-1]} <= set(out_theirs.losses)
        for name, value in out_theirs.losses.items():
            assert_close(out_ours.losses[name], value, rtol=0, atol=0)
        assert out_ours.losses["ortho_loss"].item() == 0.0
        assert out_ours.losses["contrastive_loss"].item() == 0.0
        assert_close(out_ours.loss, out_theirs.loss, rtol=0, atol=0)
        assert out_theirs.losses["auxiliary_reconstruction_loss"] > 0
        for name, p in theirs.named_parameters():
            assert_close(dict(ours.named_parameters())[name].grad, p.grad, rtol=0, atol=0)
        with torch.no_grad():
            for sae in (ours, theirs):
                for p in sae.parameters():
                    p -= 1e-3 * p.grad
    assert ours.topk_threshold.item() > 0
    assert torch.equal(ours.topk_threshold, theirs.topk_threshold)

    ours.save_inference_model(tmp_path / "ours")
    theirs.save_inference_model(tmp_path / "theirs")
    w_ours, w_theirs = (load_file(tmp_path / d / "sae_weights.safetensors") for d in ("ours", "theirs"))
    assert w_ours.keys() == w_theirs.keys()
    for key in w_theirs:
        assert_close(w_ours[key], w_theirs[key], rtol=0, atol=0)
    c_ours, c_theirs = (json.loads((tmp_path / d / "cfg.json").read_text()) for d in ("ours", "theirs"))
    assert c_ours.pop("metadata")["training_architecture"] == "ortho_contrastive"
    c_theirs.pop("metadata")
    assert c_ours == c_theirs
    assert c_ours["architecture"] == "jumprelu"


def test_a_last_width_below_d_sae_gets_d_sae_appended_as_saelens_does():
    with pytest.warns(UserWarning, match="final matryoshka level"):
        sae = OrthoContrastiveTrainingSAE(build_cfg(matryoshka_widths=[32, 64]))
    assert sae.cfg.matryoshka_widths == [32, 64, D_SAE]


def test_with_coefficients_on_the_loss_is_saelens_matryoshka_plus_the_two_named_terms():
    torch.manual_seed(0)
    ours = perturb(OrthoContrastiveTrainingSAE(build_cfg()))
    theirs = saelens_sae()
    shared_state(ours, theirs)
    ours.n_steps_trained.fill_(300)
    x, dead = batch(), dead_mask(D_SAE)
    out = ours.training_forward_pass(step_input(x, dead, ortho=2.0, contrastive=0.2))
    base_out = theirs.training_forward_pass(step_input(x, dead))

    tau = ours.ortho_threshold_at(300)
    D = ours.W_dec / ours.W_dec.norm(dim=1, keepdim=True)
    assert set(out.losses) == set(base_out.losses) | {"ortho_loss", "contrastive_loss"}
    assert_close(out.losses["ortho_loss"], 2.0 * ortho_penalty_exact(D, tau))
    assert_close(out.losses["contrastive_loss"], 0.2 * self_contrastive_loss(x, out.sae_out, 0.1, ours.projection))
    assert out.losses["ortho_loss"] > 0
    for name, value in base_out.losses.items():
        assert_close(out.losses[name], value, rtol=0, atol=0)
    assert_close(out.loss, sum(out.losses.values()))
    assert ours.current_step() == 301


def test_a_non_finite_loss_leaves_every_weight_and_the_threshold_as_they_were():
    sae = OrthoContrastiveTrainingSAE(build_cfg())
    sae.training_forward_pass(step_input(batch(), ortho=1.0))  # moves the threshold off 0
    before = copy.deepcopy(sae.state_dict())
    with pytest.raises(FloatingPointError, match=r"non-finite loss at training step 1"):
        sae.training_forward_pass(step_input(batch(seed=1), ortho=float("inf"), contrastive=0.3))
    for key, value in sae.state_dict().items():
        assert torch.equal(value, before[key]), key


# --- the ortho term across the nested groups ---------------------------------------------


def naive_scoped_penalty(D, tau, widths, pairs):
    """mean over all n (n - 1) ordered pairs of relu(|cos| - tau)^2, pairs out of scope 0."""
    n = D.shape[0]
    group = torch.bucketize(torch.arange(n), torch.tensor(widths), right=True)
    same = group[:, None] == group[None, :]
    in_scope = same if pairs == "within_groups" else ~same
    in_scope &= ~torch.eye(n, dtype=torch.bool)
    terms = torch.relu((D @ D.T).abs() - tau) ** 2
    return (terms * in_scope).sum() / (n * (n - 1))


@pytest.mark.parametrize("pairs", ["within_groups", "across_groups"])
def test_scoped_ortho_penalty_matches_a_naive_masked_mean_and_its_gradient(pairs):
    W = torch.randn(D_SAE, D_IN, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    W.requires_grad_(True)
    got = matryoshka_ortho_penalty(W / W.norm(dim=1, keepdim=True), 0.1, WIDTHS, pairs, block_size=50)
    (grad_got,) = torch.autograd.grad(got, W)
    want = naive_scoped_penalty(W / W.norm(dim=1, keepdim=True), 0.1, WIDTHS, pairs)
    (grad_want,) = torch.autograd.grad(want, W)
    assert got > 0
    assert_close(got, want)
    assert_close(grad_got, grad_want)


def test_within_plus_across_groups_is_the_whole_dictionary():
    D = torch.nn.functional.normalize(torch.randn(D_SAE, D_IN, generator=torch.Generator().manual_seed(2)), dim=1)
    within = matryoshka_ortho_penalty(D, 0.05, WIDTHS, "within_groups")
    across = matryoshka_ortho_penalty(D, 0.05, WIDTHS, "across_groups")
    assert_close(within + across, ortho_penalty_exact(D, 0.05))


@pytest.mark.parametrize("pairs", ["within_groups", "across_groups"])
@pytest.mark.parametrize("mode", ["exact", "close_pairs"])
def test_the_training_step_penalises_the_configured_pairs(pairs, mode):
    sae = perturb(OrthoContrastiveTrainingSAE(build_cfg(matryoshka_ortho_pairs=pairs, ortho_mode=mode)))
    out = sae.training_forward_pass(step_input(batch(), dead_mask(D_SAE), ortho=3.0))
    tau = sae.ortho_threshold_at(0)
    D = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    assert_close(out.losses["ortho_loss"], 3.0 * naive_scoped_penalty(D, tau, WIDTHS, pairs))
    if mode == "close_pairs":  # the listed pairs served the step (no dense fallback)
        assert sae.ortho_close_pairs is not None and len(sae.ortho_close_pairs) > 0


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"matryoshka_widths": []}, r"matryoshka_widths=\[\] is invalid: sparsity_base='matryoshka_batchtopk' needs the nested prefix widths, e.g. \[32, 64, 128, 256\]"),
        ({"matryoshka_widths": [64, 32, 256]}, r"matryoshka_widths=\[64, 32, 256\] is invalid: the widths must be strictly increasing and at most d_sae=256"),
        ({"matryoshka_widths": [64, 512]}, r"matryoshka_widths=\[64, 512\] is invalid: .*at most d_sae=256"),
        ({"matryoshka_widths": [0, 256]}, r"matryoshka_widths=\[0, 256\] is invalid: the widths must be positive integers"),
        ({"matryoshka_ortho_pairs": "nested"}, r"matryoshka_ortho_pairs='nested' is invalid: allowed values are all, within_groups, across_groups"),
        ({"matryoshka_ortho_pairs": "within_groups", "ortho_mode": "chunked"}, r"matryoshka_ortho_pairs='within_groups' is invalid: ortho_mode='chunked'"),
        ({"matryoshka_ortho_pairs": "across_groups", "ortho_overfull_chunks": 4},
         r"matryoshka_ortho_pairs='across_groups' is invalid: ortho_overfull_chunks=4 estimates the term on random chunks"),
        ({"k": 300}, r"k=300 is invalid: it must satisfy 0 < k <= d_sae=256"),
        ({"topk_threshold_lr": 0.0}, r"topk_threshold_lr=0.0 is invalid: it must be in \(0, 1\]"),
        ({"l1_coefficient": 5.0}, r"l1_coefficient=5.0 is invalid: only sparsity_base='relu_l1' reads it"),
        ({"use_sparse_activations": True}, r"use_sparse_activations=True is invalid: only sparsity_base='topk' reads it"),
        ({"sparsity_base": "batchtopk"}, r"matryoshka_widths=\[32, 64, 128, 256\] is invalid: only sparsity_base='matryoshka_batchtopk' reads it, and sparsity_base='batchtopk'; .*default \[\]"),
        ({"sparsity_base": "topk", "matryoshka_widths": [], "use_matryoshka_aux_loss": True}, r"use_matryoshka_aux_loss=True is invalid: only sparsity_base='matryoshka_batchtopk' reads it"),
        ({"sparsity_base": "batchtopk", "matryoshka_widths": [], "matryoshka_ortho_pairs": "across_groups"}, r"matryoshka_ortho_pairs='across_groups' is invalid: only sparsity_base='matryoshka_batchtopk'"),
    ],
)
def test_bad_matryoshka_values_are_refused_with_field_value_and_rule(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_cfg(**kwargs)


def test_a_budget_too_short_for_the_threshold_to_settle_is_refused():
    with pytest.raises(ValueError, match=r"= 60 training steps is too few for sparsity_base='matryoshka_batchtopk' at topk_threshold_lr=0.01: .*at least 299 steps"):
        runner_cfg(build_cfg(contrastive_coefficient=0.0, ortho_anneal_steps=None), training_tokens=4096 * 60)
    assert runner_cfg(build_cfg(contrastive_coefficient=0.0), training_tokens=4096 * 299)


def test_the_config_survives_json_and_the_runner_config():
    python_cfg = runner_cfg(build_cfg(matryoshka_ortho_pairs="across_groups"))
    from_dict = type(python_cfg).from_dict(json.loads(json.dumps(python_cfg.to_dict())))
    assert from_dict.sae == python_cfg.sae
    assert from_dict.sae.matryoshka_widths == WIDTHS
    assert type(OrthoContrastiveTrainingSAE(from_dict.sae)) is OrthoContrastiveMatryoshkaBatchTopKTrainingSAE


# --- checkpoints and saved models --------------------------------------------------------


def test_a_training_checkpoint_resumes_and_opens_as_jumprelu(tmp_path):
    sae = perturb(OrthoContrastiveTrainingSAE(build_cfg(topk_threshold_lr=0.5)))
    for step in range(3):
        sae.training_forward_pass(step_input(batch(seed=step)))
    sae.save_model(tmp_path)

    resumed = OrthoContrastiveTrainingSAE(copy.deepcopy(sae.cfg))
    resumed.load_weights_from_checkpoint(tmp_path)
    for key, value in sae.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key

    opened = SAE.load_from_disk(tmp_path)
    assert isinstance(opened, JumpReLUSAE)
    x = batch(seed=9)
    with torch.no_grad():
        hidden_pre = sae.encode_with_hidden_pre(x)[1]
        want_acts = hidden_pre.relu() * (hidden_pre > sae.topk_threshold)
        assert_close(opened.encode(x), want_acts)
        assert_close(opened(x), sae.decode(want_acts))


STEPS, BATCH = 50, 64
RUN_SETUP = dict(d_model=32, n_layers=1, context_size=16, n_sequences=256)
RUN_SAE = {
    "sparsity_base": MAT, "k": 4, "matryoshka_widths": [16, 32, 64, 128],
    "topk_threshold_lr": 0.2, "contrastive_warm_up_steps": 10, "ortho_coefficient": 5.0,
}


def test_runner_trains_it_and_the_saved_model_loads_without_the_plugin(tmp_path, plugin_free_python):
    setup = ToySetup(**RUN_SETUP, sae_kwargs=RUN_SAE)
    path = tmp_path / "sae"
    cfg = tiny_runner_config(setup, training_tokens=BATCH * STEPS, train_batch_size_tokens=BATCH, output_path=str(path))
    model = tiny_model(setup)
    runner = LanguageModelSAETrainingRunner(cfg, override_model=model, override_dataset=tiny_token_dataset(setup))
    sae = runner.run()
    assert type(sae) is OrthoContrastiveMatryoshkaBatchTopKTrainingSAE
    assert int(sae.n_steps_trained) == STEPS == sae.cfg.ortho_anneal_steps
    assert sae.topk_threshold.item() > 0

    saved_cfg = json.loads((path / "cfg.json").read_text())
    assert saved_cfg["architecture"] == "jumprelu"
    assert saved_cfg["metadata"]["training_architecture_details"]["sparsity_base"] == MAT
    assert not {"projection", "n_steps_trained", "topk_threshold"} & set(load_file(path / "sae_weights.safetensors"))

    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        hidden_pre = sae.encode_with_hidden_pre(x)[1]
        acts = hidden_pre.relu() * (hidden_pre > sae.topk_threshold)
        out = sae.decode(acts)
    torch.save({"x": x, "acts": acts, "out": out}, tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import sys
        import torch
        from sae_lens import SAE
        t = torch.load({str(tmp_path / "expected.pt")!r})
        sae = SAE.load_from_disk({str(path)!r})
        torch.testing.assert_close(sae.encode(t["x"]), t["acts"])
        torch.testing.assert_close(sae(t["x"]), t["out"])
        print(type(sae).__name__, sae.cfg.architecture(), sae.cfg.metadata.training_steps)
        assert "orthosae_plugin" not in sys.modules
    """)
    result = plugin_free_python.run(script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == f"JumpReLUSAE jumprelu {STEPS}"
