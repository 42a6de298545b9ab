"""ortho_mode='close_pairs' in the training SAE: the exact loss at every step, provably
(a list checked against how far the decoder rows moved since its scan), never trusted
across a state-dict load, never saved; while the list is over-full, the exact term or its
unbiased estimate on random chunks; lazy regularization ('weighted' and 'reuse'); one
device sync per step."""

import pytest
import torch
from sae_lens.saes.sae import TrainStepInput
from torch.testing import assert_close

from helpers import random_batch
from helpers import step_input as make_step_input
from orthosae_plugin import OrthoContrastiveTrainingSAE, OrthoContrastiveTrainingSAEConfig
from orthosae_plugin.orthogonality import close_pair_scan


def build_cfg(**kwargs) -> OrthoContrastiveTrainingSAEConfig:
    # At d_in=64 random directions have |cos| ~ 0.1, so lists are long: allow them.
    defaults = dict(d_in=64, d_sae=256, ortho_anneal_steps=60, contrastive_coefficient=0.0,
                    ortho_max_pair_fraction=1.0, ortho_max_pairs_per_latent=256,
                    ortho_lazy_every=1)  # the term at every step, except in the lazy test
    return OrthoContrastiveTrainingSAEConfig(**{**defaults, **kwargs})


def step_input(x, ortho=1.0) -> TrainStepInput:
    return make_step_input(x, {"l1": 0.5, "ortho": ortho, "contrastive": 0.0})


def batch(step, B=32, d=64):
    return random_batch(B, d, step)


def naive_ortho_penalty(W_dec: torch.Tensor, tau: float) -> torch.Tensor:
    """mean over ordered pairs i != j of relu(|cos(W_i, W_j)| - tau)^2, the whole matrix."""
    D = W_dec / W_dec.norm(dim=1, keepdim=True)
    n = D.shape[0]
    C = D @ D.T
    off_diagonal = 1.0 - torch.eye(n)
    return (torch.relu(C.abs() - tau) * off_diagonal).pow(2).sum() / (n * (n - 1))


def reference_step(sae, x, step, ortho_weight):
    """The same step written plainly: the SAE without its ortho term, plus the naive penalty
    at the annealed threshold of ``step``. Returns (ortho loss, total loss, gradients)."""
    ref = OrthoContrastiveTrainingSAE(build_cfg(ortho_coefficient=0.0))
    ref.load_state_dict(sae.state_dict())
    out = ref.training_forward_pass(step_input(x, ortho=0.0))
    ortho = ortho_weight * naive_ortho_penalty(ref.W_dec, sae.ortho_threshold_at(step))
    (out.loss + ortho).backward()
    return ortho.detach(), (out.loss + ortho).detach(), {n: p.grad.clone() for n, p in ref.named_parameters()}


def steps_against_the_reference(sae, steps):
    """Trains ``sae`` with Adam for ``steps`` steps; before each optimizer step yields the
    step's output (after backward) and the naive reference of that step."""
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    for step in range(steps):
        x = batch(step)
        want = reference_step(sae, x, step, ortho_weight=1.0)
        out = sae.training_forward_pass(step_input(x))
        out.loss.backward()
        yield out, *want
        opt.step()
        opt.zero_grad()


def test_close_pairs_equals_a_naive_exact_reference_at_every_step_across_rescans():
    torch.manual_seed(0)
    # A small margin, a fast-falling threshold and a large learning rate: the list must be
    # rescanned, and steps recomputed, many times in 30 steps.
    sae = OrthoContrastiveTrainingSAE(build_cfg(ortho_margin=0.02, ortho_anneal_steps=30, ortho_threshold_start=0.4))
    for out, want_ortho, want_loss, want_grads in steps_against_the_reference(sae, 30):
        assert want_ortho > 0
        assert_close(out.losses["ortho_loss"], want_ortho, rtol=1e-4, atol=1e-9)
        assert_close(out.loss, want_loss, rtol=1e-5, atol=1e-7)
        for name, p in sae.named_parameters():
            assert_close(p.grad, want_grads[name], rtol=1e-4, atol=1e-7)
    print(f"scans {sae.ortho_scans}, recomputed steps {sae.ortho_recomputed_steps}")
    assert sae.ortho_scans >= 5  # rescans across threshold changes and movements
    assert sae.ortho_recomputed_steps >= 1  # and at least one step the check caught late


@pytest.mark.parametrize("mode", ["close_pairs", "exact"])
def test_bf16_products_approximate_the_float32_reference_at_every_step(mode):
    torch.manual_seed(0)
    sae = OrthoContrastiveTrainingSAE(build_cfg(ortho_mode=mode, ortho_matmul_dtype="bfloat16", ortho_margin=0.02,
                                                ortho_anneal_steps=12, ortho_threshold_start=0.4))
    for out, want_ortho, _, want_grads in steps_against_the_reference(sae, 12):
        assert abs(out.losses["ortho_loss"] - want_ortho) <= 0.02 * want_ortho
        grad, ref = sae.W_dec.grad, want_grads["W_dec"]
        assert (grad - ref).norm() <= 0.02 * ref.norm()
    assert mode == "exact" or sae.ortho_scans >= 2


def orthogonal_sae(**kwargs) -> OrthoContrastiveTrainingSAE:
    """An SAE whose 64 first decoder rows are orthonormal (no pair listed at a threshold > 0)."""
    sae = OrthoContrastiveTrainingSAE(build_cfg(d_sae=64, ortho_margin=0.05, **kwargs))
    with torch.no_grad():
        sae.W_dec.copy_(torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(0)))[0])
    return sae


def test_the_movement_check_recomputes_the_step_when_an_unlisted_pair_could_have_crossed():
    sae = orthogonal_sae()
    sae.training_forward_pass(step_input(batch(0)))
    assert sae.ortho_scan_step == 0 and sae.ortho_close_pairs.shape[0] == 0
    with torch.no_grad():  # row 0 moves onto row 1: the pair (0, 1) now has cos 0.8
        sae.W_dec[0] = 0.6 * sae.W_dec[0] + 0.8 * sae.W_dec[1]
    out = sae.training_forward_pass(step_input(batch(1)))
    assert sae.ortho_recomputed_steps == 1
    assert sae.ortho_scan_step == 1
    assert {(0, 1), (1, 0)} <= set(map(tuple, sae.ortho_close_pairs.tolist()))
    assert out.losses["ortho_loss"] > 0
    assert_close(out.losses["ortho_loss"], naive_ortho_penalty(sae.W_dec.detach(), sae.ortho_threshold_at(1)))


def test_rows_that_move_less_than_the_slack_keep_the_list_without_a_scan():
    sae = orthogonal_sae()
    sae.training_forward_pass(step_input(batch(0)))
    with torch.no_grad():  # movements ~0.01, far below tau - L = margin = 0.05
        sae.W_dec.add_(0.01 * torch.randn(64, 64, generator=torch.Generator().manual_seed(1)) / 8)
    sae.training_forward_pass(step_input(batch(1)))
    assert (sae.ortho_scans, sae.ortho_recomputed_steps, sae.ortho_scan_step) == (1, 0, 0)


def test_lazy_regularization_computes_the_term_every_r_steps_with_weight_r():
    """The gradient is r times the term's on every r-th step and none in between; the
    logged value is one step's term (on the steps between, the last computed one), so
    that a loss curve reads like a per-step value (before: r x the term, then 0, 0, 0)."""
    torch.manual_seed(0)
    sae = OrthoContrastiveTrainingSAE(build_cfg(ortho_lazy_every=3, ortho_coefficient=2.0))
    last_value = None
    for step in range(7):
        x = batch(step)
        want_ortho, want_loss, want_grads = reference_step(sae, x, step, ortho_weight=3 * 2.0 if step % 3 == 0 else 0.0)
        if step % 3 == 0:
            last_value = want_ortho / 3  # 2.0 x the penalty at this step
        out = sae.training_forward_pass(TrainStepInput(
            sae_in=x, coefficients={"l1": 0.5, "ortho": 2.0, "contrastive": 0.0},
            dead_neuron_mask=None, n_training_steps=step, is_logging_step=False,
        ))
        out.loss.backward()
        assert out.losses["ortho_loss"] > 0
        assert out.losses["ortho_loss"].requires_grad == (step % 3 == 0)
        assert_close(out.losses["ortho_loss"], last_value, rtol=1e-4, atol=1e-9)
        assert_close(out.loss, sum(out.losses.values()))
        for name, p in sae.named_parameters():
            assert_close(p.grad, want_grads[name], rtol=1e-4, atol=1e-7)
            p.grad = None


def penalty_on_unit_rows(D: torch.Tensor, tau: float) -> torch.Tensor:
    """The penalty of rows taken as they are (already unit): no normalisation inside."""
    n = D.shape[0]
    C = D @ D.T
    return (torch.relu(C.abs() - tau) * (1.0 - torch.eye(n))).pow(2).sum() / (n * (n - 1))


@pytest.mark.parametrize("mode", ["close_pairs", "exact"])
def test_reuse_mode_applies_the_last_computed_gradient_on_every_step_until_the_next(mode):
    torch.manual_seed(0)
    sae = OrthoContrastiveTrainingSAE(build_cfg(ortho_mode=mode, ortho_lazy_every=3, ortho_lazy_mode="reuse",
                                                ortho_coefficient=2.0))
    opt = torch.optim.SGD(sae.parameters(), lr=0.05)  # the rows move: the kept gradient goes stale
    for step in range(8):
        x = batch(step)
        if step % 3 == 0:  # the value and gradient of the penalty at this step's unit rows
            D0 = (sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)).detach().requires_grad_()
            value0 = penalty_on_unit_rows(D0, sae.ortho_threshold_at(step))
            (g0,) = torch.autograd.grad(value0, D0)
        ref = OrthoContrastiveTrainingSAE(build_cfg(ortho_coefficient=0.0))
        ref.load_state_dict(sae.state_dict())
        ref_out = ref.training_forward_pass(step_input(x, ortho=0.0))
        D = ref.W_dec / ref.W_dec.norm(dim=1, keepdim=True)  # today's rows, yesterday's gradient
        (ref_out.loss + 2.0 * (D * g0).sum()).backward()
        out = sae.training_forward_pass(TrainStepInput(
            sae_in=x, coefficients={"l1": 0.5, "ortho": 2.0, "contrastive": 0.0},
            dead_neuron_mask=None, n_training_steps=step, is_logging_step=False,
        ))
        out.loss.backward()
        assert value0 > 0
        assert_close(out.losses["ortho_loss"], 2.0 * value0.detach(), rtol=1e-4, atol=1e-9)
        assert_close(out.loss, ref_out.loss.detach() + 2.0 * value0.detach(), rtol=1e-5, atol=1e-7)
        for (name, p), (_, p_ref) in zip(sae.named_parameters(), ref.named_parameters()):
            assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-7)
        opt.step()
        opt.zero_grad()


def test_reuse_mode_computes_again_after_a_load_and_logs_how_far_the_gradient_moved():
    torch.manual_seed(0)
    sae = OrthoContrastiveTrainingSAE(build_cfg(ortho_lazy_every=4, ortho_lazy_mode="reuse"))
    opt = torch.optim.SGD(sae.parameters(), lr=0.05)

    def train_step(step, logging=False):
        out = sae.training_forward_pass(TrainStepInput(
            sae_in=batch(step), coefficients={"l1": 0.5, "ortho": 1.0, "contrastive": 0.0},
            dead_neuron_mask=None, n_training_steps=step, is_logging_step=logging,
        ))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        return out

    train_step(0), train_step(1)
    kept_step = sae.ortho_term.reused_step
    sae.load_state_dict(sae.state_dict())  # e.g. a resumed checkpoint: nothing kept is trusted
    train_step(2)
    assert (kept_step, sae.ortho_term.reused_step) == (0, 2)
    train_step(3)
    out = train_step(4, logging=True)  # computed again at 4: the change since step 2 is logged
    assert sae.ortho_term.reused_step == 4
    assert 0 < out.metrics["ortho_reused_grad_rel_change"] < 10


@pytest.mark.parametrize(("mode", "lazy_mode"), [("close_pairs", "weighted"), ("exact", "weighted"),
                                                  ("chunked", "weighted"), ("close_pairs", "reuse")])
def test_a_training_step_syncs_with_the_device_once(monkeypatch, mode, lazy_mode):
    lazy = {"ortho_lazy_mode": "reuse", "ortho_lazy_every": 4} if lazy_mode == "reuse" else {}
    sae = OrthoContrastiveTrainingSAE(build_cfg(ortho_mode=mode, **lazy))
    sae.training_forward_pass(step_input(batch(0)))  # the first step scans (and syncs there)
    calls = []
    for method in ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero"):
        original = getattr(torch.Tensor, method)
        monkeypatch.setattr(torch.Tensor, method, lambda self, *a, _o=original, _m=method, **k: calls.append(_m) or _o(self, *a, **k))
    for step in range(1, 4):
        before = len(calls)
        sae.training_forward_pass(step_input(batch(step)))
        assert sae.ortho_scan_step in (0, -1)  # no scan in these steps
        assert calls[before:] == ["tolist"]
    assert sae.current_step() == 4


def test_the_clock_follows_a_write_from_outside():
    sae = OrthoContrastiveTrainingSAE(build_cfg())
    sae.training_forward_pass(step_input(batch(0)))
    assert sae.current_step() == 1
    sae.n_steps_trained.fill_(23)
    assert sae.current_step() == 23
    sae.training_forward_pass(step_input(batch(0)))
    assert sae.current_step() == 24 and int(sae.n_steps_trained) == 24
    state = sae.state_dict()
    state["n_steps_trained"] = torch.tensor(5)
    sae.load_state_dict(state)
    assert sae.current_step() == 5


def test_the_list_holds_the_pairs_above_the_threshold_minus_the_margin_at_its_scan():
    sae = OrthoContrastiveTrainingSAE(build_cfg(ortho_margin=0.03))
    sae.n_steps_trained.fill_(23)
    sae.training_forward_pass(step_input(batch(0)))
    assert sae.ortho_scan_step == 23
    want = close_pair_scan(sae.unit_decoder().detach(), sae.ortho_threshold_at(23) - 0.03)
    assert torch.equal(sae.ortho_close_pairs, want)


def test_a_state_dict_load_or_a_fresh_sae_scans_again_and_the_list_is_never_saved():
    sae = OrthoContrastiveTrainingSAE(build_cfg())
    sae.n_steps_trained.fill_(3)
    sae.training_forward_pass(step_input(batch(0)))
    assert sae.ortho_scan_step == 3
    state = sae.state_dict()
    assert not {"ortho_close_pairs", "ortho_scan_decoder", "ortho_scan_step"} & set(state)

    with torch.no_grad():
        state["W_dec"] = torch.randn_like(state["W_dec"])
    sae.load_state_dict(state)  # new weights, same step: the old list must not serve them
    assert sae.ortho_scan_step == -1 and sae.ortho_scan_decoder is None
    sae.training_forward_pass(step_input(batch(1)))
    assert sae.ortho_scan_step == 4
    want = close_pair_scan(sae.unit_decoder().detach(), sae.ortho_threshold_at(4) - sae.cfg.ortho_margin)
    assert torch.equal(sae.ortho_close_pairs, want)

    resumed = OrthoContrastiveTrainingSAE(sae.cfg)
    assert resumed.ortho_close_pairs is None
    assert resumed.ortho_scan_step == -1


@pytest.mark.parametrize("cap", [{"ortho_max_pair_fraction": 1e-4}, {"ortho_max_pairs_per_latent": 0.5}])
def test_an_over_full_list_falls_back_to_the_exact_computation_and_retries_later(cap):
    sae = OrthoContrastiveTrainingSAE(build_cfg(ortho_rescan_every=3, **cap))
    for step in range(5):
        out = sae.training_forward_pass(step_input(batch(step)))
        assert sae.ortho_close_pairs is None
        assert out.losses["ortho_loss"] > 0
        assert_close(out.losses["ortho_loss"], naive_ortho_penalty(sae.W_dec.detach(), sae.ortho_threshold_at(step)))
    # Step 0 scans; step 3 retries, and a sample of rows shows the list far over its cap: no scan.
    assert (sae.ortho_scans, sae.ortho_scans_skipped, sae.ortho_scan_step) == (1, 1, 3)


def test_a_retry_scans_when_the_sample_shows_that_the_list_may_fit_now():
    sae = OrthoContrastiveTrainingSAE(build_cfg(d_sae=64, ortho_rescan_every=2, ortho_max_pairs_per_latent=0.5))
    sae.training_forward_pass(step_input(batch(0)))
    assert (sae.ortho_scans, sae.ortho_close_pairs) == (1, None)
    with torch.no_grad():  # now orthogonal: no pair is close
        sae.W_dec.copy_(torch.eye(64))
    for step in (1, 2):
        sae.training_forward_pass(step_input(batch(step)))
    assert (sae.ortho_scans, sae.ortho_scans_skipped, sae.ortho_scan_step) == (2, 0, 2)
    assert sae.ortho_close_pairs is not None


def naive_chunk_penalty(W_dec: torch.Tensor, tau: float, chunks: list[torch.Tensor]) -> torch.Tensor:
    """The naive penalty's terms over the ordered pairs inside each chunk (index tensors),
    divided by the number of such pairs."""
    D = W_dec / W_dec.norm(dim=1, keepdim=True)
    total, n_pairs = 0.0, 0
    for idx in chunks:
        C = D[idx] @ D[idx].T
        total = total + (torch.relu(C.abs() - tau) * (1.0 - torch.eye(len(idx)))).pow(2).sum()
        n_pairs += len(idx) * (len(idx) - 1)
    return total / n_pairs


def test_an_over_full_list_with_over_full_chunks_estimates_the_term_on_random_chunks():
    # d_sae 256 in 5 chunks: 4 of ceil(256 / 5) = 52 latents and one of 48, drawn from
    # the permutation of (projection_seed, step), a new one every step.
    sae = OrthoContrastiveTrainingSAE(build_cfg(ortho_max_pair_fraction=1e-4, ortho_overfull_chunks=5,
                                                projection_seed=3))
    for step in range(3):
        W_ref = sae.W_dec.detach().clone().requires_grad_()
        perm = torch.randperm(256, generator=torch.Generator().manual_seed(3 * 1_000_003 + step))
        want = naive_chunk_penalty(W_ref, sae.ortho_threshold_at(step), list(perm.split(52)))
        want.backward()
        out = sae.training_forward_pass(step_input(batch(step)))
        assert sae.ortho_close_pairs is None
        assert_close(out.losses["ortho_loss"], want.detach())
        sae.W_dec.grad = None
        out.losses["ortho_loss"].backward()
        assert_close(sae.W_dec.grad, W_ref.grad)
        with torch.no_grad():  # move the rows, as training would
            sae.W_dec.add_(0.05 * torch.randn_like(sae.W_dec))


def test_the_over_full_estimate_is_unbiased_and_one_chunk_is_the_exact_term():
    torch.manual_seed(0)
    W_dec = torch.randn(96, 64)
    tau = 0.1
    exact = naive_ortho_penalty(W_dec, tau)
    one_chunk = OrthoContrastiveTrainingSAE(build_cfg(d_sae=96, ortho_max_pair_fraction=1e-4, ortho_overfull_chunks=1))
    with torch.no_grad():
        one_chunk.W_dec.copy_(W_dec)
    assert_close(one_chunk.ortho_term.penalty(one_chunk.unit_decoder(), tau, 0), exact)
    sae = OrthoContrastiveTrainingSAE(build_cfg(d_sae=96, ortho_max_pair_fraction=1e-4, ortho_overfull_chunks=4))
    with torch.no_grad():
        sae.W_dec.copy_(W_dec)
    estimates = torch.stack([sae.ortho_term.penalty(sae.unit_decoder(), tau, step).detach() for step in range(400)])
    assert estimates.std() > 0.01 * exact  # a random estimate...
    mean, sem = estimates.mean(), estimates.std() / 400 ** 0.5
    assert abs(mean - exact) < 4 * sem  # ...whose expectation is the exact term


def test_over_full_chunks_leave_the_steps_on_the_list_exact():
    sae = OrthoContrastiveTrainingSAE(build_cfg(ortho_overfull_chunks=8))
    for step in range(4):
        out = sae.training_forward_pass(step_input(batch(step)))
        assert sae.ortho_close_pairs is not None
        assert_close(out.losses["ortho_loss"], naive_ortho_penalty(sae.W_dec.detach(), sae.ortho_threshold_at(step)))


def test_no_scan_without_the_ortho_term():
    sae = OrthoContrastiveTrainingSAE(build_cfg())
    sae.training_forward_pass(step_input(batch(0), ortho=0.0))
    assert sae.ortho_scan_step == -1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ortho_margin": -0.1}, r"ortho_margin=-0.1 is invalid: .* \[0, 1\]"),
        ({"ortho_margin": float("nan")}, r"ortho_margin=nan is invalid"),
        ({"ortho_rescan_every": 0}, r"ortho_rescan_every=0 is invalid: it must be >= 1"),
        ({"ortho_max_pair_fraction": 0.0}, r"ortho_max_pair_fraction=0.0 is invalid: .* \(0, 1\]"),
        ({"ortho_max_pair_fraction": 1.5}, r"ortho_max_pair_fraction=1.5 is invalid"),
        ({"ortho_max_pairs_per_latent": 0}, r"ortho_max_pairs_per_latent=0 is invalid: it must be > 0"),
        ({"ortho_lazy_every": 0}, r"ortho_lazy_every=0 is invalid: it must be >= 1"),
        ({"ortho_lazy_every": 2.5}, r"ortho_lazy_every=2.5 is invalid"),
        ({"ortho_mode": "fast"}, r"ortho_mode='fast' is invalid: allowed modes are exact, chunked, close_pairs"),
        ({"ortho_overfull_chunks": 0}, r"ortho_overfull_chunks=0 is invalid: it must be >= 1"),
        ({"ortho_overfull_chunks": 4, "ortho_mode": "exact"},
         r"ortho_overfull_chunks=4 is invalid: it applies to ortho_mode='close_pairs' only"),
    ],
)
def test_bad_close_pair_settings_are_refused_with_field_value_and_rule(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_cfg(**kwargs)
