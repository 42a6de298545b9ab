"""ortho_mode='close_pairs' in the training SAE: the same training as 'exact', a list
rescanned on schedule, never trusted across a state-dict load, never saved."""

import pytest
import torch
from sae_lens.saes.sae import TrainStepInput
from torch.testing import assert_close

from orthosae_plugin import OrthoContrastiveTrainingSAE, OrthoContrastiveTrainingSAEConfig
from orthosae_plugin.orthogonality import close_pair_scan


def build_cfg(**kwargs) -> OrthoContrastiveTrainingSAEConfig:
    # At d_in=64 random directions have |cos| ~ 0.1, so lists are long: allow them.
    defaults = dict(d_in=64, d_sae=256, ortho_anneal_steps=60, contrastive_coefficient=0.0,
                    ortho_max_pair_fraction=1.0)
    return OrthoContrastiveTrainingSAEConfig(**{**defaults, **kwargs})


def step_input(x, ortho=1.0) -> TrainStepInput:
    return TrainStepInput(
        sae_in=x,
        coefficients={"l1": 0.5, "ortho": ortho, "contrastive": 0.0},
        dead_neuron_mask=None,
        n_training_steps=0,
        is_logging_step=False,
    )


def batch(step, B=32, d=64):
    return torch.randn(B, d, generator=torch.Generator().manual_seed(step)) + 1.0


def twin(cfg_a, cfg_b):
    torch.manual_seed(0)
    a = OrthoContrastiveTrainingSAE(cfg_a)
    b = OrthoContrastiveTrainingSAE(cfg_b)
    b.load_state_dict(a.state_dict())
    return a, b


def train_step(sae, opt, step):
    out = sae.training_forward_pass(step_input(batch(step)))
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    opt.step()
    opt.zero_grad()
    return out, grads


def test_close_pairs_trains_exactly_like_exact_while_the_list_is_reused_between_scans():
    exact, close = twin(build_cfg(ortho_mode="exact"), build_cfg(ortho_mode="close_pairs", ortho_rescan_every=5, ortho_margin=0.1))
    opt_e = torch.optim.Adam(exact.parameters(), lr=1e-4)
    opt_c = torch.optim.Adam(close.parameters(), lr=1e-4)
    scans = []
    for step in range(12):
        out_e, grads_e = train_step(exact, opt_e, step)
        out_c, grads_c = train_step(close, opt_c, step)
        scans.append(int(close.ortho_scan_step))
        assert out_e.losses["ortho_loss"] > 0
        assert_close(out_c.losses["ortho_loss"], out_e.losses["ortho_loss"])
        assert_close(out_c.loss, out_e.loss)
        for name in grads_e:
            assert_close(grads_c[name], grads_e[name])
    assert scans == [0, 1, 2, 2, 4] + [5] * 5 + [10] * 2  # 1, 2, 4 below rescan_every
    assert 0 < close.ortho_close_pairs.shape[0] < 0.5 * 256 * 255  # a real list, not all pairs


@pytest.mark.parametrize(
    ("every", "scan_steps"),
    [(20, [0, 1, 2, 4, 8, 16, 20, 40, 60]), (5, [0, 1, 2, 4, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60]), (1, list(range(61)))],
)
def test_scans_come_at_powers_of_two_then_every_rescan_every_steps(every, scan_steps):
    sae = OrthoContrastiveTrainingSAE(build_cfg(ortho_mode="close_pairs", ortho_rescan_every=every))
    seen = []
    for step in range(61):
        sae.n_steps_trained.fill_(step)
        sae._ortho_penalty(sae.ortho_threshold_at(step), step)
        if int(sae.ortho_scan_step) == step:
            seen.append(step)
    assert seen == scan_steps


def test_the_list_holds_the_pairs_above_the_lowest_threshold_it_serves_minus_the_margin():
    sae = OrthoContrastiveTrainingSAE(build_cfg(ortho_mode="close_pairs", ortho_rescan_every=10, ortho_margin=0.03))
    sae.n_steps_trained.fill_(23)  # an anneal of 60 steps: tau drops fast between 23 and 29
    sae.training_forward_pass(step_input(batch(0)))
    assert int(sae.ortho_scan_step) == 23
    want = close_pair_scan(sae.unit_decoder().detach(), sae.ortho_threshold_at(29) - 0.03)
    assert sae.ortho_threshold_at(29) < sae.ortho_threshold_at(23) - 0.03
    assert torch.equal(sae.ortho_close_pairs, want)


def test_a_state_dict_load_or_a_fresh_sae_scans_again_and_the_list_is_never_saved():
    sae = OrthoContrastiveTrainingSAE(build_cfg(ortho_mode="close_pairs", ortho_rescan_every=100))
    sae.n_steps_trained.fill_(3)
    sae.training_forward_pass(step_input(batch(0)))
    assert int(sae.ortho_scan_step) == 3
    state = sae.state_dict()
    assert not {"ortho_close_pairs", "ortho_scan_step"} & set(state)

    with torch.no_grad():
        state["W_dec"] = torch.randn_like(state["W_dec"])
    sae.load_state_dict(state)  # new weights, same step: the old list must not serve them
    assert int(sae.ortho_scan_step) == -1
    sae.training_forward_pass(step_input(batch(1)))
    assert int(sae.ortho_scan_step) == 4
    # it serves steps 4 to 7 (the next scan is at step 8)
    want = close_pair_scan(sae.unit_decoder().detach(), sae.ortho_threshold_at(7) - sae.cfg.ortho_margin)
    assert torch.equal(sae.ortho_close_pairs, want)

    resumed = OrthoContrastiveTrainingSAE(sae.cfg)
    assert resumed.ortho_close_pairs is None
    assert int(resumed.ortho_scan_step) == -1


def test_an_over_full_list_falls_back_to_the_exact_computation():
    exact, close = twin(build_cfg(ortho_mode="exact"), build_cfg(ortho_mode="close_pairs", ortho_max_pair_fraction=1e-4))
    out_e = exact.training_forward_pass(step_input(batch(0)))
    out_c = close.training_forward_pass(step_input(batch(0)))
    assert close.ortho_close_pairs is None
    assert int(close.ortho_scan_step) == 0
    assert out_e.losses["ortho_loss"] > 0
    assert_close(out_c.losses["ortho_loss"], out_e.losses["ortho_loss"])


def test_no_scan_without_the_ortho_term():
    sae = OrthoContrastiveTrainingSAE(build_cfg(ortho_mode="close_pairs"))
    sae.training_forward_pass(step_input(batch(0), ortho=0.0))
    assert int(sae.ortho_scan_step) == -1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ortho_margin": -0.1}, r"ortho_margin=-0.1 is invalid: .* \[0, 1\]"),
        ({"ortho_margin": float("nan")}, r"ortho_margin=nan is invalid"),
        ({"ortho_rescan_every": 0}, r"ortho_rescan_every=0 is invalid: it must be >= 1"),
        ({"ortho_max_pair_fraction": 0.0}, r"ortho_max_pair_fraction=0.0 is invalid: .* \(0, 1\]"),
        ({"ortho_max_pair_fraction": 1.5}, r"ortho_max_pair_fraction=1.5 is invalid"),
        ({"ortho_mode": "fast"}, r"ortho_mode='fast' is invalid: allowed modes are exact, chunked, close_pairs"),
    ],
)
def test_bad_close_pair_settings_are_refused_with_field_value_and_rule(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_cfg(**kwargs)
