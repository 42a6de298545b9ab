"""The ``ortho_contrastive`` training SAE: a SAELens sparsity base plus two loss terms.

(a) ``ortho_loss``, a decoder-orthogonality penalty on pairs whose |cos| exceeds a
    threshold cosine-annealed from ``ortho_threshold_start`` to ``ortho_threshold_end``
    over ``ortho_anneal_steps`` (default: the run's real number of training steps),
    computed by :class:`~orthosae_plugin.ortho_term.OrthogonalityTerm`, and
(b) ``contrastive_loss``, a self-contrastive InfoNCE loss on reconstructions whose
    similarities go through a fixed random projection (``projection_dim``; None = exact
    cosines), its weight warmed up linearly from 0 to ``contrastive_coefficient`` over
    ``contrastive_warm_up_steps`` by SAELens's own coefficient scheduler.

The base is SAELens's own class (``StandardTrainingSAE``, ``TopKTrainingSAE``,
``BatchTopKTrainingSAE``, ``MatryoshkaBatchTopKTrainingSAE``), so its encoder, auxiliary
dead-latent loss, batch threshold and save-time conversion are SAELens's code, not a
copy. ``OrthoContrastiveTrainingSAE(cfg)`` builds the class for ``cfg.sparsity_base``, so
SAELens's ``sae_cls(cfg)`` works unchanged. Both terms only shape training: the saved
inference model is the base's plain SAELens inference form (docs/method.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import save_file
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE
from sae_lens.saes.matryoshka_batchtopk_sae import MatryoshkaBatchTopKTrainingSAE
from sae_lens.saes.sae import TrainCoefficientConfig, TrainingSAE, TrainStepInput, TrainStepOutput
from sae_lens.saes.standard_sae import StandardTrainingSAE
from sae_lens.saes.topk_sae import TopKTrainingSAE
from typing_extensions import override

from orthosae_plugin.checkpoints import check_resumed_settings
from orthosae_plugin.config import OrthoContrastiveTrainingSAEConfig
from orthosae_plugin.contrastive import make_projection, self_contrastive_loss
from orthosae_plugin.early_checks import check_parameters_fit
from orthosae_plugin.inference import TRAINING_ONLY_BUFFERS, class_for_base
from orthosae_plugin.ortho_term import MatryoshkaPairScope, OrthogonalityTerm
from orthosae_plugin.orthogonality import decoder_pair_stats
from orthosae_plugin.run_budget import check_resumed_horizon
from orthosae_plugin.saving import write_folder_atomically


class OrthoContrastiveTrainingSAE(TrainingSAE[OrthoContrastiveTrainingSAEConfig]):
    """A SAELens sparsity base plus the ``ortho_loss`` and ``contrastive_loss`` terms.

    ``OrthoContrastiveTrainingSAE(cfg)`` returns an instance of the subclass for
    ``cfg.sparsity_base``, which combines this class with SAELens's own training class:
    ``OrthoContrastiveReLUL1TrainingSAE`` (``StandardTrainingSAE``),
    ``OrthoContrastiveTopKTrainingSAE`` (``TopKTrainingSAE``),
    ``OrthoContrastiveBatchTopKTrainingSAE`` (``BatchTopKTrainingSAE``) or
    ``OrthoContrastiveMatryoshkaBatchTopKTrainingSAE`` (``MatryoshkaBatchTopKTrainingSAE``).
    This class holds what all bases share and defers everything else to the base through
    ``super()``: the encoder, the base's own losses and coefficients, its state updates
    and its conversion for saving.

    Buffers (saved in training checkpoints, dropped from the inference model):
    ``projection`` ``(d_in, k)`` when ``projection_dim`` is set, and ``n_steps_trained``,
    the clock of the threshold schedule and of the chunk permutations, written to the
    inference model's metadata as ``training_steps``. ``ortho_term`` holds the
    orthogonality term's state between steps (the close-pair list, the kept gradient of
    'reuse' mode); a checkpoint does not carry it: the first step after construction,
    resume or ``load_state_dict`` scans and computes again.

    Why a clock of its own rather than ``step_input.n_training_steps``: SAELens writes a
    checkpoint after a step's optimizer and coefficient-scheduler updates but before it
    increments ``n_training_steps``, so after a resume its counter is one behind the
    batches actually trained (and behind its own coefficient schedulers). This buffer
    counts the steps taken and travels with the weights, so a resumed run continues the
    threshold schedule exactly where the interrupted one stopped.
    """

    cfg: OrthoContrastiveTrainingSAEConfig  # type: ignore[assignment]
    projection: torch.Tensor | None
    n_steps_trained: torch.Tensor
    ortho_term: OrthogonalityTerm

    _state_updated_by_base_step: ClassVar[tuple[str, ...]] = ()
    """Buffers that the base's own ``training_forward_pass`` updates (BatchTopK's
    threshold); put back as they were when a step is refused for a non-finite loss."""

    def __new__(cls, *args: Any, **kwargs: Any) -> OrthoContrastiveTrainingSAE:
        return super().__new__(class_for_base(cls, OrthoContrastiveTrainingSAE, _TRAINING_CLASS_PER_BASE, args, kwargs))

    def __init__(self, cfg: OrthoContrastiveTrainingSAEConfig, use_error_term: bool = False):
        check_parameters_fit(cfg)  # before anything is allocated
        super().__init__(cfg, use_error_term)  # type: ignore[arg-type]

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        projection = None
        if self.cfg.projection_dim is not None:
            projection = make_projection(
                self.cfg.d_in, self.cfg.projection_dim, self.cfg.projection_seed, dtype=self.dtype, device=self.device
            )
        self.register_buffer("projection", projection)
        self.register_buffer("n_steps_trained", torch.zeros((), dtype=torch.long, device=self.device))
        self._clock_cache: tuple[torch.Tensor, int, int] | None = None
        self.ortho_term = OrthogonalityTerm(self.cfg, self.ortho_pair_scope())
        self.register_load_state_dict_post_hook(_forget_close_pairs)

    def ortho_pair_scope(self) -> MatryoshkaPairScope | None:
        """The decoder pairs the ortho term covers; None: all of them."""
        return None

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {
            **super().get_coefficients(),
            "ortho": TrainCoefficientConfig(value=self.cfg.ortho_coefficient, warm_up_steps=0),
            "contrastive": TrainCoefficientConfig(
                value=self.cfg.contrastive_coefficient,
                warm_up_steps=self.cfg.contrastive_warm_up_steps,
            ),
        }

    def ortho_threshold_at(self, step: int) -> float:
        """The annealed threshold tau at training step ``step``."""
        return self.ortho_term.threshold_at(step)

    def current_step(self) -> int:
        """Training steps completed before the current one (the schedule clock).

        Read from the ``n_steps_trained`` buffer (the state a checkpoint carries) only
        when the buffer was set from outside (constructed, loaded, moved, or written in
        place since this module last advanced it, which its version counter tells), so
        a training step reads it without a device sync.
        """
        clock = self.n_steps_trained
        cached = self._clock_cache
        if cached is None or cached[0] is not clock or cached[1] != clock._version:
            cached = (clock, clock._version, int(clock.item()))
            self._clock_cache = cached
        return cached[2]

    def _advance_clock(self, step: int) -> None:
        with torch.no_grad():
            self.n_steps_trained.fill_(step + 1)
        self._clock_cache = (self.n_steps_trained, self.n_steps_trained._version, step + 1)

    def unit_decoder(self) -> torch.Tensor:
        """``W_dec`` with unit-norm rows, ``(d_sae, d_in)``, in at least float32 (the
        cosines of a bf16/fp16 decoder are computed in float32; the gradient flows back
        into ``W_dec`` in its own dtype)."""
        W_dec_nd = self.W_dec.to(_compute_dtype(self.W_dec.dtype))
        return W_dec_nd / W_dec_nd.norm(dim=1, keepdim=True).clamp_min(1e-12)

    # --- the close-pair list, as the benchmarks and earlier versions read it -----------

    @property
    def ortho_close_pairs(self) -> torch.Tensor | None:
        """'close_pairs': the close-pair list ``(P, 2)`` (None until a scan, or while it
        would be over-full)."""
        return self.ortho_term.close_pair_list.pairs

    @property
    def ortho_scan_decoder(self) -> torch.Tensor | None:
        """'close_pairs': the unit decoder rows at the list's scan."""
        return self.ortho_term.close_pair_list.scan_decoder

    @property
    def ortho_scan_step(self) -> int:
        """'close_pairs': the step of the last scan (-1: none)."""
        return self.ortho_term.close_pair_list.scan_step

    @property
    def ortho_scans(self) -> int:
        """'close_pairs': scans run (tried ones included)."""
        return self.ortho_term.close_pair_list.scans

    @property
    def ortho_scans_skipped(self) -> int:
        """'close_pairs': retries of an over-full list skipped on a sample of rows."""
        return self.ortho_term.close_pair_list.scans_skipped

    @property
    def ortho_recomputed_steps(self) -> int:
        """'close_pairs': steps recomputed after the movement check failed."""
        return self.ortho_term.close_pair_list.recomputed_steps

    def forget_close_pairs(self) -> None:
        """Drop the close-pair list (the next ortho step scans again) and, in 'reuse'
        mode, the kept gradient (the next step computes the term)."""
        self.ortho_term.forget()

    def ortho_overfull_estimate(self, D_nd: torch.Tensor, tau: float, step: int) -> torch.Tensor:
        """The term's estimate while the close-pair list is over-full
        (:meth:`OrthogonalityTerm.overfull_estimate`)."""
        return self.ortho_term.overfull_estimate(D_nd, tau, step)

    # --- the step ------------------------------------------------------------------------

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        losses = super().calculate_aux_loss(step_input, feature_acts, hidden_pre, sae_out)
        zero = sae_out.new_zeros(())

        ortho_weight = step_input.coefficients["ortho"]
        ortho_loss = zero
        if ortho_weight > 0:
            step = self.current_step()
            term = self.ortho_term
            if term.computes_at(step) or term.last_penalty is None:
                ortho_loss = term(self.unit_decoder(), step, ortho_weight)
            else:  # between two lazy steps: the last computed value, logged without a gradient
                ortho_loss = ortho_weight * term.last_penalty

        contrastive_weight = step_input.coefficients["contrastive"]
        contrastive_loss = zero
        if contrastive_weight > 0:
            # In at least float32 whatever the SAE's dtype: SAELens hands the input in
            # the activations' dtype and the reconstruction in the SAE's.
            dtype = _compute_dtype(sae_out.dtype)
            contrastive_loss = contrastive_weight * self_contrastive_loss(
                step_input.sae_in.to(dtype),
                sae_out.to(dtype),
                temperature=self.cfg.contrastive_temperature,
                projection_DK=None if self.projection is None else self.projection.to(dtype),
            )
        return {**losses, "ortho_loss": ortho_loss, "contrastive_loss": contrastive_loss}

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        _check_coefficients(self, step_input)
        step = self.current_step()
        state_before = {name: getattr(self, name).clone() for name in self._state_updated_by_base_step}
        self.ortho_term.take_drift()  # only this step's movement bound is checked below
        output = super().training_forward_pass(step_input)
        # One device sync per step: a NaN/inf must stop training before the optimizer
        # writes it into the weights (and before anything can be saved from them); the
        # close-pair list's movement check is read in the same transfer.
        checks = [torch.isfinite(output.loss.detach()).all().float()]
        drift = self.ortho_term.take_drift()
        if drift is not None:
            checks.append(drift.float())
        values = torch.stack(checks).tolist()
        if not values[0]:
            self._refuse_non_finite(output, step, state_before)
        # A NaN coefficient leaves the loss finite (`nan > 0` is false: its term is off).
        bad = [f"{name}={value}" for name, value in step_input.coefficients.items() if not math.isfinite(float(value))]
        if bad:
            self._refuse_non_finite(output, step, state_before, f"coefficient {', '.join(bad)}")
        if len(values) > 1 and self.ortho_term.missed_a_pair(step, values[1]):
            # A pair left out of the list may have crossed the threshold: recompute the
            # step on a fresh scan (rare; benchmarks/results/speed counts them), so that
            # the loss is the exact one at every step.
            for name, value in state_before.items():
                setattr(self, name, value.clone())
            output = super().training_forward_pass(step_input)
            self.ortho_term.after_recompute(step)
            if not torch.isfinite(output.loss.detach()).item():
                self._refuse_non_finite(output, step, state_before)
        self._advance_clock(step)
        if step_input.is_logging_step and self.cfg.ortho_anneal_steps is not None:
            tau = self.ortho_threshold_at(step)
            max_abs_cos, frac_above = decoder_pair_stats(self.unit_decoder().detach(), tau, self.cfg.ortho_block_size)
            output.metrics["ortho_threshold"] = tau
            output.metrics["decoder_max_abs_cos"] = max_abs_cos
            output.metrics["decoder_frac_pairs_above_threshold"] = frac_above
            if self.ortho_term.reused_grad_change is not None:
                output.metrics["ortho_reused_grad_rel_change"] = self.ortho_term.reused_grad_change.item()
        return output

    def _refuse_non_finite(
        self, output: TrainStepOutput, step: int, state_before: dict[str, torch.Tensor], cause: str = ""
    ) -> None:
        for name, value in state_before.items():
            setattr(self, name, value)
        bad = [cause] if cause else [
            f"{name}={value.item()}"
            for name, value in output.losses.items()
            if not torch.isfinite(value.detach()).all()
        ]
        raise FloatingPointError(
            f"ortho_contrastive: non-finite loss at training step {step}: "
            f"{', '.join(bad) or 'total loss=' + str(output.loss.item())}. Training "
            "stopped before the optimizer step, so no weights were corrupted. Lower the "
            "learning rate or the loss coefficients, or check the input activations."
        )

    # --- saving and resuming -------------------------------------------------------------

    @override
    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving_inference(state_dict)
        for key in TRAINING_ONLY_BUFFERS:
            state_dict.pop(key, None)

    @override
    def save_inference_model(self, path: str | Path) -> tuple[Path, Path]:
        """Write the base's plain SAELens inference form (``standard``, ``topk`` or
        ``jumprelu``) as a folder that appears whole or not at all (see ``saving.py``):
        a reader never pairs the weights of one save with the ``cfg.json`` of another,
        and a failed save leaves the previous one intact and no temporaries behind.

        The metadata records ``training_steps``, so that evals can tell an SAE trained
        for 4 steps from a trained one.
        """
        state_dict = self.state_dict()
        self.process_state_dict_for_saving_inference(state_dict)
        # On the SAE too, so that the SAE in memory (a runner's return value) and its
        # saved copy carry the same metadata.
        self.cfg.metadata.training_steps = int(self.n_steps_trained.item())
        config = self.cfg.get_inference_sae_cfg_dict()
        config["metadata"]["training_steps"] = self.cfg.metadata.training_steps

        def write(folder: Path) -> None:
            save_file(state_dict, folder / SAE_WEIGHTS_FILENAME)
            (folder / SAE_CFG_FILENAME).write_text(json.dumps(config))

        path = write_folder_atomically(path, write)
        return path / SAE_WEIGHTS_FILENAME, path / SAE_CFG_FILENAME

    @override
    def load_weights_from_checkpoint(self, checkpoint_path: Path | str) -> None:
        """Resume: refuse a checkpoint whose derived anneal horizon differs from this
        run's, which would bend the threshold schedule halfway through, or whose settings
        differ (``checkpoints.check_resumed_settings``)."""
        check_resumed_horizon(self.cfg, Path(checkpoint_path) / SAE_CFG_FILENAME)
        check_resumed_settings(self.cfg, Path(checkpoint_path))
        super().load_weights_from_checkpoint(checkpoint_path)


# One concrete class per base. The MRO puts OrthoContrastiveTrainingSAE first, so its
# methods wrap SAELens's through `super()`; nothing of the base is re-implemented here.


class OrthoContrastiveReLUL1TrainingSAE(OrthoContrastiveTrainingSAE, StandardTrainingSAE):  # type: ignore[misc]
    """``ortho_contrastive`` on SAELens ``standard`` (ReLU + L1); saved as ``standard``."""


class OrthoContrastiveTopKTrainingSAE(OrthoContrastiveTrainingSAE, TopKTrainingSAE):  # type: ignore[misc]
    """``ortho_contrastive`` on SAELens ``topk``; saved as ``topk``."""


class OrthoContrastiveBatchTopKTrainingSAE(OrthoContrastiveTrainingSAE, BatchTopKTrainingSAE):  # type: ignore[misc]
    """``ortho_contrastive`` on SAELens ``batchtopk``; saved as ``jumprelu``."""

    _state_updated_by_base_step = ("topk_threshold",)


class OrthoContrastiveMatryoshkaBatchTopKTrainingSAE(  # type: ignore[misc]
    OrthoContrastiveTrainingSAE, MatryoshkaBatchTopKTrainingSAE
):
    """``ortho_contrastive`` on SAELens ``matryoshka_batchtopk``; saved as ``jumprelu``.

    SAELens's class adds one ``inner_mse_loss_{width}`` per nested prefix; the
    contrastive term compares the whole dictionary's reconstruction with the input, and
    the ortho term covers the pairs ``matryoshka_ortho_pairs`` names."""

    _state_updated_by_base_step = ("topk_threshold",)

    @override
    def ortho_pair_scope(self) -> MatryoshkaPairScope | None:
        return None if self.cfg.matryoshka_ortho_pairs == "all" else MatryoshkaPairScope(self.cfg)


_TRAINING_CLASS_PER_BASE: dict[str, type[OrthoContrastiveTrainingSAE]] = {
    "relu_l1": OrthoContrastiveReLUL1TrainingSAE,
    "topk": OrthoContrastiveTopKTrainingSAE,
    "batchtopk": OrthoContrastiveBatchTopKTrainingSAE,
    "matryoshka_batchtopk": OrthoContrastiveMatryoshkaBatchTopKTrainingSAE,
}


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the two loss terms compute in: float32, or float64 for a float64 SAE."""
    return torch.promote_types(dtype, torch.float32)


def _forget_close_pairs(sae: OrthoContrastiveTrainingSAE, incompatible_keys: Any) -> None:
    """Load-state-dict hook: new weights make the close-pair list (and the value logged
    between lazy steps) stale; scan at the next step."""
    sae.forget_close_pairs()
    sae.ortho_term.last_penalty = None


def _check_coefficients(sae: OrthoContrastiveTrainingSAE, step_input: TrainStepInput) -> None:
    """A ``TrainStepInput`` built by hand must carry every coefficient the SAE declares."""
    missing = [name for name in sae.get_coefficients() if name not in step_input.coefficients]
    if missing:
        raise ValueError(
            f"TrainStepInput.coefficients={step_input.coefficients!r} is invalid: it lacks "
            f"{', '.join(map(repr, missing))}. Pass SAETrainer.get_coefficients(), or every "
            f"name of sae.get_coefficients() ({', '.join(map(repr, sae.get_coefficients()))}) "
            "with its current value."
        )
