"""ortho_contrastive on each sparsity base (relu_l1, topk, batchtopk): with the extra
coefficients at 0 it is SAELens's own standard / topk / batchtopk; the two terms add to the
base's losses; per-base validation; saving in the base's inference form, loaded without
the plugin; and training through SAELens's runner. (matryoshka_batchtopk has its own
file, test_matryoshka_base.py.)"""

import copy
import json
import sys
import textwrap
from dataclasses import MISSING, fields

import pytest
import torch
from safetensors.torch import load_file, save_file
from sae_lens import SAE, LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner
from sae_lens.registry import get_sae_training_class
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.jumprelu_sae import JumpReLUSAEConfig
from sae_lens.saes.sae import TrainingSAE, TrainStepInput
from sae_lens.saes.standard_sae import StandardSAEConfig, StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
from torch.testing import assert_close

from orthosae_plugin import (
    OrthoContrastiveBatchTopKTrainingSAE,
    OrthoContrastiveReLUL1TrainingSAE,
    OrthoContrastiveTopKTrainingSAE,
    OrthoContrastiveTrainingSAE,
    OrthoContrastiveTrainingSAEConfig,
)
from orthosae_plugin.cli import parse_train_args
from orthosae_plugin.contrastive import self_contrastive_loss
from orthosae_plugin.orthogonality import ortho_penalty_exact
from orthosae_plugin.toy import ToySetup, tiny_model, tiny_runner_config, tiny_token_dataset
from helpers import dead_mask, perturb, random_batch, runner_cfg, shared_state
from helpers import step_input as make_step_input

D_IN, D_SAE, K = 64, 256, 8

# base -> (our class, SAELens's training class and config, SAELens's inference config)
SAELENS = {
    "relu_l1": (OrthoContrastiveReLUL1TrainingSAE, StandardTrainingSAE, StandardTrainingSAEConfig, StandardSAEConfig),
    "topk": (OrthoContrastiveTopKTrainingSAE, TopKTrainingSAE, TopKTrainingSAEConfig, TopKSAEConfig),
    "batchtopk": (OrthoContrastiveBatchTopKTrainingSAE, BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, JumpReLUSAEConfig),
}
K_OF_BASE = {"relu_l1": {}, "topk": {"k": K}, "batchtopk": {"k": K}}


def build_cfg(base, **kwargs) -> OrthoContrastiveTrainingSAEConfig:
    defaults = dict(d_in=D_IN, d_sae=D_SAE, ortho_anneal_steps=1000, sparsity_base=base, **K_OF_BASE[base])
    return OrthoContrastiveTrainingSAEConfig(**{**defaults, **kwargs})


def saelens_sae(base, **kwargs):
    _, sae_cls, cfg_cls, _ = SAELENS[base]
    return sae_cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, **{**K_OF_BASE[base], **kwargs}))


def step_input(x, dead=None, l1=0.5, ortho=0.0, contrastive=0.0) -> TrainStepInput:
    return make_step_input(x, {"l1": l1, "ortho": ortho, "contrastive": contrastive}, dead)


def batch(B=32, seed=0):
    return random_batch(B, D_IN, seed)


def dense(t):
    return t.to_dense() if t.is_sparse else t


# --- which class each base builds --------------------------------------------------------


@pytest.mark.parametrize("base", list(SAELENS))
def test_the_sparsity_base_picks_saelens_own_class(base):
    ours_cls, saelens_cls, _, inference_cfg = SAELENS[base]
    cfg = build_cfg(base)
    registered_cls, _ = get_sae_training_class("ortho_contrastive")
    sae = registered_cls(cfg)  # how SAELens's runners build it
    assert type(sae) is ours_cls
    assert isinstance(sae, OrthoContrastiveTrainingSAE)
    assert isinstance(sae, saelens_cls)
    assert cfg.get_inference_config_class() is inference_cfg
    clone = copy.deepcopy(sae)
    assert type(clone) is ours_cls
    assert torch.equal(clone.W_enc, sae.W_enc)


def test_base_fields_carry_saelens_names_and_defaults():
    ours = {f.name: f.default for f in fields(OrthoContrastiveTrainingSAEConfig)}
    for _, _, cfg_cls, _ in SAELENS.values():
        for f in fields(cfg_cls):
            if f.default is not MISSING:
                assert ours[f.name] == f.default, (cfg_cls.__name__, f.name)
    assert ours["sparsity_base"] == "relu_l1"


# --- equivalence with SAELens ------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "base_kwargs"),
    [
        ("relu_l1", {}),
        ("topk", {}),
        ("topk", {"rescale_acts_by_decoder_norm": False, "aux_loss_coefficient": 0.5}),
        # SAELens's sparse path with the default rescaling fails in backward on CPU torch
        # 2.13 (a sparse x dense broadcast in act_times_W_dec), in SAELens's own topk too.
        ("topk", {"use_sparse_activations": True, "rescale_acts_by_decoder_norm": False}),
        ("batchtopk", {}),
        ("batchtopk", {"topk_threshold_lr": 0.3, "k": 2.5}),
    ],
)
def test_with_extra_coefficients_at_zero_each_base_is_saelens_own(base, base_kwargs, tmp_path):
    torch.manual_seed(0)
    ours = OrthoContrastiveTrainingSAE(
        build_cfg(base, ortho_coefficient=0.0, contrastive_coefficient=0.0, **base_kwargs)
    )
    torch.manual_seed(0)
    theirs = saelens_sae(base, **base_kwargs)
    # The same initialisation from the same seed (the projection has its own generator).
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    perturb(ours)
    shared_state(ours, theirs)
    assert set(ours.get_coefficients()) == set(theirs.get_coefficients()) | {"ortho", "contrastive"}
    for name, value in theirs.get_coefficients().items():
        assert ours.get_coefficients()[name] == value

    # A few steps with the same update on both: BatchTopK's threshold is a running mean.
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
        assert_close(dense(out_ours.feature_acts), dense(out_theirs.feature_acts), rtol=0, atol=0)
        assert_close(out_ours.hidden_pre, out_theirs.hidden_pre, rtol=0, atol=0)
        assert set(out_ours.losses) == set(out_theirs.losses) | {"ortho_loss", "contrastive_loss"}
        for name, value in out_theirs.losses.items():
            assert_close(out_ours.losses[name], value, rtol=0, atol=0)
        assert out_ours.losses["ortho_loss"].item() == 0.0
        assert out_ours.losses["contrastive_loss"].item() == 0.0
        assert_close(out_ours.loss, out_theirs.loss, rtol=0, atol=0)
        if base != "relu_l1":
            assert out_theirs.losses["auxiliary_reconstruction_loss"] > 0  # the dead latents count
        for name, p in theirs.named_parameters():
            assert_close(dict(ours.named_parameters())[name].grad, p.grad, rtol=0, atol=0)
        with torch.no_grad():
            for sae in (ours, theirs):
                for p in sae.parameters():
                    p -= 1e-3 * p.grad
    if base == "batchtopk":
        assert ours.topk_threshold.item() > 0
        assert torch.equal(ours.topk_threshold, theirs.topk_threshold)

    # The saved inference model is SAELens's own conversion: same tensors, same config.
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


@pytest.mark.parametrize("base", ["topk", "batchtopk"])
def test_with_coefficients_on_the_loss_is_the_base_plus_the_two_named_terms(base):
    torch.manual_seed(0)
    ours = perturb(OrthoContrastiveTrainingSAE(build_cfg(base)))
    theirs = saelens_sae(base)
    shared_state(ours, theirs)
    ours.n_steps_trained.fill_(300)
    x, dead = batch(), dead_mask(D_SAE)
    out = ours.training_forward_pass(step_input(x, dead, ortho=2.0, contrastive=0.2))
    base_out = theirs.training_forward_pass(step_input(x, dead))

    tau = ours.ortho_threshold_at(300)
    D = ours.W_dec / ours.W_dec.norm(dim=1, keepdim=True)
    assert set(out.losses) == {"mse_loss", "auxiliary_reconstruction_loss", "ortho_loss", "contrastive_loss"}
    assert 300 % ours.cfg.ortho_lazy_every == 0  # a step that computes the (lazy) ortho term
    assert_close(out.losses["ortho_loss"], 2.0 * ortho_penalty_exact(D, tau))  # one step's term, logged
    assert_close(out.losses["contrastive_loss"], 0.2 * self_contrastive_loss(x, out.sae_out, 0.1, ours.projection))
    assert out.losses["ortho_loss"] > 0
    for name, value in base_out.losses.items():
        assert_close(out.losses[name], value, rtol=0, atol=0)
    assert_close(out.loss, sum(out.losses.values()))
    assert ours.current_step() == 301


@pytest.mark.parametrize("base", list(SAELENS))
@pytest.mark.parametrize("failure", ["nan_input", "inf_ortho_weight"])
def test_a_non_finite_loss_leaves_every_weight_and_buffer_as_it_was(base, failure):
    sae = OrthoContrastiveTrainingSAE(build_cfg(base, ortho_lazy_every=1))  # the ortho term at step 1 too
    sae.training_forward_pass(step_input(batch(), ortho=1.0))  # moves BatchTopK's threshold off 0
    before = copy.deepcopy(sae.state_dict())
    x, ortho = batch(seed=1), 1.0
    if failure == "nan_input":
        x[3, 5] = float("nan")
    else:  # the base's own forward stays finite, so BatchTopK updates its threshold
        ortho = float("inf")
    with pytest.raises(FloatingPointError, match=r"non-finite loss at training step 1"):
        sae.training_forward_pass(step_input(x, ortho=ortho, contrastive=0.3))
    for key, value in sae.state_dict().items():
        assert torch.equal(value, before[key]), key


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sparsity_base": "jumprelu"}, r"sparsity_base='jumprelu' is invalid: allowed bases are relu_l1, topk, batchtopk, matryoshka_batchtopk"),
        ({"sparsity_base": "relu_l1", "k": 4}, r"k=4 is invalid: only sparsity_base='topk' or 'batchtopk' or 'matryoshka_batchtopk' reads it, and sparsity_base='relu_l1'; .*default 100"),
        ({"sparsity_base": "topk", "l1_coefficient": 5.0}, r"l1_coefficient=5.0 is invalid: only sparsity_base='relu_l1' reads it"),
        ({"sparsity_base": "batchtopk", "l1_warm_up_steps": 10}, r"l1_warm_up_steps=10 is invalid: only sparsity_base='relu_l1' reads it"),
        ({"sparsity_base": "topk", "topk_threshold_lr": 0.1}, r"topk_threshold_lr=0.1 is invalid: only sparsity_base='batchtopk' or 'matryoshka_batchtopk' reads it"),
        ({"sparsity_base": "batchtopk", "use_sparse_activations": True}, r"use_sparse_activations=True is invalid: only sparsity_base='topk' reads it"),
        ({"sparsity_base": "relu_l1", "aux_loss_coefficient": 0.5}, r"aux_loss_coefficient=0.5 is invalid: only sparsity_base='topk' or 'batchtopk'"),
        ({"sparsity_base": "topk", "k": 0}, r"k=0 is invalid: it must satisfy 0 < k <= d_sae=256"),
        ({"sparsity_base": "batchtopk", "k": 300}, r"k=300 is invalid: it must satisfy 0 < k <= d_sae=256"),
        ({"sparsity_base": "topk", "k": 2.5}, r"k=2.5 is invalid: sparsity_base='topk' keeps a whole number"),
        ({"sparsity_base": "topk", "aux_loss_coefficient": -1.0}, r"aux_loss_coefficient=-1.0 is invalid: .*>= 0"),
        ({"sparsity_base": "batchtopk", "topk_threshold_lr": 0.0}, r"topk_threshold_lr=0.0 is invalid: it must be in \(0, 1\]"),
        ({"sparsity_base": "batchtopk", "topk_threshold_lr": 1.5}, r"topk_threshold_lr=1.5 is invalid: it must be in \(0, 1\]"),
        ({"sparsity_base": "topk", "normalize_activations": "layer_norm"}, r"normalize_activations='layer_norm' is invalid: SAELens's TopK auxiliary loss"),
    ],
)
def test_bad_base_values_are_refused_with_field_value_and_rule(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OrthoContrastiveTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, **kwargs)


def test_base_values_that_saelens_accepts_are_accepted():
    assert build_cfg("batchtopk", k=2.5).k == 2.5  # an average over the batch
    topk = build_cfg("topk", k=4.0)
    assert topk.k == 4 and isinstance(topk.k, int)
    build_cfg("topk", normalize_activations="layer_norm", aux_loss_coefficient=0.0)


def test_a_benchmark_can_pick_the_base_from_a_dict_and_it_survives_json():
    sae_cfg = OrthoContrastiveTrainingSAEConfig.from_dict(
        {"architecture": "ortho_contrastive", "d_in": D_IN, "d_sae": D_SAE, "sparsity_base": "batchtopk", "k": 4}
    )
    python_cfg = runner_cfg(sae_cfg)
    as_json = json.loads(json.dumps(python_cfg.to_dict()))
    assert as_json["sae"]["sparsity_base"] == "batchtopk"
    from_dict = LanguageModelSAERunnerConfig.from_dict(as_json)
    assert from_dict.sae == python_cfg.sae
    assert type(OrthoContrastiveTrainingSAE(from_dict.sae)) is OrthoContrastiveBatchTopKTrainingSAE


def test_command_line_picks_the_base():
    args = ["--architecture", "ortho_contrastive", "--d_in", "64", "--d_sae", "256",
            "--training_tokens", str(4096 * 2000), "--train_batch_size_tokens", "4096",
            "--sparsity_base", "topk", "--k", "16", "--aux_loss_coefficient", "0.5"]
    cli_cfg = parse_train_args(args)
    assert cli_cfg.sae == runner_cfg(build_cfg("topk", k=16, aux_loss_coefficient=0.5, ortho_anneal_steps=None)).sae
    assert isinstance(cli_cfg.sae.k, int)


def test_a_batchtopk_budget_too_short_for_the_threshold_to_settle_is_refused():
    # 60 steps at topk_threshold_lr=0.01: 0.99^60 = 0.55 of the threshold is still its 0 start.
    with pytest.raises(ValueError, match=r"training_tokens=245760 // train_batch_size_tokens=4096 = 60 training steps is too few for sparsity_base='batchtopk' at topk_threshold_lr=0.01: .*= 0.55 .*at least 299 steps, or raise topk_threshold_lr to at least 0.0487"):
        runner_cfg(build_cfg("batchtopk", contrastive_coefficient=0.0, ortho_anneal_steps=None), training_tokens=4096 * 60)
    assert runner_cfg(build_cfg("batchtopk", contrastive_coefficient=0.0), training_tokens=4096 * 299)
    assert runner_cfg(build_cfg("batchtopk", contrastive_coefficient=0.0, topk_threshold_lr=0.05), training_tokens=4096 * 60)


# --- checkpoints -------------------------------------------------------------------------


@pytest.mark.parametrize(("base", "inference_cls"), [("relu_l1", "StandardSAE"), ("topk", "TopKSAE"), ("batchtopk", "JumpReLUSAE")])
def test_a_training_checkpoint_resumes_and_opens_in_the_base_inference_form(base, inference_cls, tmp_path):
    moving_threshold = {"topk_threshold_lr": 0.5} if base == "batchtopk" else {}
    sae = perturb(OrthoContrastiveTrainingSAE(build_cfg(base, **moving_threshold)))
    for step in range(3):
        sae.training_forward_pass(step_input(batch(seed=step)))
    sae.save_model(tmp_path)

    resumed = OrthoContrastiveTrainingSAE(copy.deepcopy(sae.cfg))
    resumed.load_weights_from_checkpoint(tmp_path)
    for key, value in sae.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key

    opened = SAE.load_from_disk(tmp_path)
    assert isinstance(opened, getattr(sys.modules["sae_lens"], inference_cls))
    x = batch(seed=9)
    with torch.no_grad():
        want_acts = sae.encode(x)
        if base == "batchtopk":  # per-input JumpReLU at the running threshold
            hidden_pre = sae.encode_with_hidden_pre(x)[1]
            want_acts = hidden_pre.relu() * (hidden_pre > sae.topk_threshold)
        assert_close(opened.encode(x), want_acts)
        assert_close(opened(x), sae.decode(want_acts))


def test_a_checkpoint_written_before_the_field_existed_opens_as_relu_l1(tmp_path):
    sae = perturb(OrthoContrastiveTrainingSAE(build_cfg("relu_l1")))
    sae.save_model(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    for field in ("sparsity_base", "k", "aux_loss_coefficient", "rescale_acts_by_decoder_norm",
                  "use_sparse_activations", "topk_threshold_lr"):
        del cfg[field]
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    x = batch()
    with torch.no_grad():
        assert_close(SAE.load_from_disk(tmp_path)(x), sae(x))
        resumed = TrainingSAE.load_from_disk(tmp_path)
        assert type(resumed) is OrthoContrastiveReLUL1TrainingSAE
        assert_close(resumed(x), sae(x))


# --- saved inference models, loaded without the plugin ----------------------------------

STEPS, BATCH = 50, 64
RUN_SETUP = dict(d_model=32, n_layers=1, context_size=16, n_sequences=256)
RUN_SAE = {"k": 4, "contrastive_warm_up_steps": 10, "ortho_coefficient": 5.0}
RUN_BASES = {
    "topk": {"sparsity_base": "topk", **RUN_SAE},
    # A short run needs a faster threshold (see the budget check above).
    "batchtopk": {"sparsity_base": "batchtopk", "topk_threshold_lr": 0.2, **RUN_SAE},
}


def held_out(model, setup):
    """Activations ``(16 x context, d_model)`` of sequences the runner never saw."""
    tokens = tiny_token_dataset(ToySetup(**{**RUN_SETUP, "n_sequences": 16}, seed=123))["tokens"]
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor(tokens), names_filter=setup.hook_name)
    return cache[setup.hook_name].flatten(0, 1)


def mse(sae, x):
    with torch.no_grad():
        return (sae(x) - x).pow(2).sum(-1).mean().item()


@pytest.fixture(scope="module")
def trained_by_runner(tmp_path_factory):
    """topk and batchtopk trained through SAELens's runner on the toy model and saved by
    it: base -> dict(sae, path, x held-out, mse_before, losses seen at every step)."""
    results = {}
    original = OrthoContrastiveTrainingSAE.training_forward_pass
    with pytest.MonkeyPatch.context() as mp:
        seen: list[dict[str, float]] = []

        def spy(self, step_input):
            out = original(self, step_input)
            seen.append({name: value.item() for name, value in out.losses.items()})
            return out

        mp.setattr(OrthoContrastiveTrainingSAE, "training_forward_pass", spy)
        for base, sae_kwargs in RUN_BASES.items():
            seen.clear()
            setup = ToySetup(**RUN_SETUP, sae_kwargs=sae_kwargs)
            path = tmp_path_factory.mktemp(base) / "sae"
            cfg = tiny_runner_config(setup, training_tokens=BATCH * STEPS, train_batch_size_tokens=BATCH, output_path=str(path))
            model = tiny_model(setup)
            runner = LanguageModelSAETrainingRunner(cfg, override_model=model, override_dataset=tiny_token_dataset(setup))
            x = held_out(model, setup)
            mse_before = mse(runner.sae, x)
            sae = runner.run()
            results[base] = dict(sae=sae, path=path, x=x, mse_before=mse_before, losses=list(seen))
    return results


@pytest.mark.parametrize("base", list(RUN_BASES))
def test_runner_trains_each_topk_base_for_the_whole_budget_with_both_terms(trained_by_runner, base):
    run = trained_by_runner[base]
    sae = run["sae"]
    assert type(sae) is SAELENS[base][0]
    assert int(sae.n_steps_trained) == STEPS == len(run["losses"])
    assert sae.cfg.ortho_anneal_steps == STEPS
    assert set(run["losses"][0]) == {"mse_loss", "auxiliary_reconstruction_loss", "ortho_loss", "contrastive_loss"}
    assert any(s["ortho_loss"] > 0 for s in run["losses"])
    assert run["losses"][0]["contrastive_loss"] == 0.0 < run["losses"][-1]["contrastive_loss"]  # warmed up
    assert mse(sae, run["x"]) < 0.8 * run["mse_before"]
    saved = SAE.load_from_disk(run["path"])
    with torch.no_grad():
        l0 = (saved.encode(run["x"]) > 0).float().sum(-1)
    if base == "topk":
        assert l0.max().item() <= 4
    else:
        assert sae.topk_threshold.item() > 0
        assert 2 <= l0.mean().item() <= 8  # the JumpReLU threshold keeps L0 near k = 4


def test_saved_models_load_without_the_plugin_in_each_base_inference_form(trained_by_runner, tmp_path, plugin_free_python):
    """One plugin-free process (importing SAELens takes seconds) loads every base's saved model."""
    relu = perturb(OrthoContrastiveTrainingSAE(build_cfg("relu_l1")))
    relu.n_steps_trained.fill_(7)
    relu.save_inference_model(tmp_path / "relu_l1")
    cases = {"relu_l1": (relu, tmp_path / "relu_l1", torch.randn(8, D_IN), "standard", 7)}
    for base, arch in [("topk", "topk"), ("batchtopk", "jumprelu")]:
        run = trained_by_runner[base]
        cases[base] = (run["sae"], run["path"], run["x"][:8], arch, STEPS)

    expected = {}
    for base, (sae, path, x, arch, steps) in cases.items():
        with torch.no_grad():
            acts = sae.encode(x)
            if base == "batchtopk":  # the per-input JumpReLU form at the learnt threshold
                hidden_pre = sae.encode_with_hidden_pre(x)[1]
                acts = hidden_pre.relu() * (hidden_pre > sae.topk_threshold)
            expected |= {f"{base}.x": x, f"{base}.acts": acts, f"{base}.out": sae.decode(acts)}
        cfg = json.loads((path / "cfg.json").read_text())
        assert cfg["architecture"] == arch
        assert cfg["metadata"]["training_architecture"] == "ortho_contrastive"
        assert cfg["metadata"]["training_architecture_details"]["sparsity_base"] == base
        assert not list(path.glob("*.partial"))
        assert not {"projection", "n_steps_trained", "topk_threshold"} & set(load_file(path / "sae_weights.safetensors"))
    save_file(expected, tmp_path / "expected.safetensors")

    dirs = {base: str(path) for base, (_, path, _, _, _) in cases.items()}
    script = textwrap.dedent(f"""
        import sys
        import torch
        from safetensors.torch import load_file
        from sae_lens import SAE
        t = load_file({str(tmp_path / "expected.safetensors")!r})
        for base, path in {dirs!r}.items():
            sae = SAE.load_from_disk(path)
            torch.testing.assert_close(sae.encode(t[base + ".x"]), t[base + ".acts"])
            torch.testing.assert_close(sae(t[base + ".x"]), t[base + ".out"])
            print(base, type(sae).__name__, sae.cfg.architecture(), sae.cfg.metadata.training_steps)
        assert "orthosae_plugin" not in sys.modules
    """)
    result = plugin_free_python.run(script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == [
        "relu_l1 StandardSAE standard 7",
        f"topk TopKSAE topk {STEPS}",
        f"batchtopk JumpReLUSAE jumprelu {STEPS}",
    ]
