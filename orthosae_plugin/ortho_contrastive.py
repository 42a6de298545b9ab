"""The ``ortho_contrastive`` SAE: a ReLU SAE (SAELens ``standard``) trained with

(a) a decoder-orthogonality penalty on pairs whose |cos| exceeds a threshold that is
    cosine-annealed from ``ortho_threshold_start`` to ``ortho_threshold_end`` over
    ``ortho_anneal_steps`` (default: the run's real number of training steps), and
(b) a self-contrastive InfoNCE loss on reconstructions whose similarities go through a
    fixed random projection (``projection_dim = 128``; ``None`` = exact cosines, the
    experiment's SS-COSAE baseline), its weight warmed up linearly from 0 to
    ``contrastive_coefficient`` over ``contrastive_warm_up_steps`` by SAELens's own
    coefficient scheduler.

Both terms only shape training: the saved inference model is a plain ``standard`` SAE
that SAELens, SAEBench and Neuronpedia load without this plugin. See DESIGN.md §1.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME
from sae_lens.saes.sae import SAEConfig, TrainCoefficientConfig, TrainStepInput, TrainStepOutput
from sae_lens.saes.standard_sae import (
    StandardSAE,
    StandardSAEConfig,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
)
from typing_extensions import override

from orthosae_plugin.contrastive import make_projection, self_contrastive_loss
from orthosae_plugin.orthogonality import (
    ORTHO_MODES,
    close_pair_scan,
    decoder_pair_stats,
    ortho_penalty_chunked,
    ortho_penalty_exact,
    ortho_penalty_pairs,
    ortho_threshold,
)

ARCHITECTURE = "ortho_contrastive"

# State-dict keys that exist only for training and are dropped from the inference model.
_TRAINING_ONLY_BUFFERS = ("projection", "n_steps_trained")


@dataclass
class OrthoContrastiveTrainingSAEConfig(StandardTrainingSAEConfig):
    """Training config of the ``ortho_contrastive`` SAE.

    Inherits ``l1_coefficient``, ``lp_norm`` and ``l1_warm_up_steps`` from SAELens's
    ``StandardTrainingSAEConfig``; with ``ortho_coefficient = contrastive_coefficient = 0``
    it trains exactly like ``standard``.
    """

    ortho_coefficient: float = 1.0
    """Weight of the thresholded decoder-orthogonality penalty (>= 0; 0 turns it off)."""

    ortho_threshold_start: float = 0.3
    """|cos| above which decoder pairs are penalised at step 0, in [0, 1]."""

    ortho_threshold_end: float = 0.05
    """Threshold at the end of the anneal, in [0, 1] and <= ortho_threshold_start."""

    ortho_anneal_steps: int | None = None
    """Steps over which the threshold is cosine-annealed. None: filled in by SAELens's
    runner config with the run's real number of training steps
    (training_tokens // train_batch_size_tokens)."""

    ortho_mode: Literal["exact", "chunked", "close_pairs"] = "close_pairs"
    """'close_pairs' (default): the exact loss at a cost proportional to the number of
    close pairs: every ortho_rescan_every steps a blockwise scan lists the pairs whose
    |cos| exceeds the threshold minus ortho_margin, and in between only those pairs are
    computed. It equals 'exact' as long as no unlisted pair's |cos| rises by more than
    ortho_margin between two scans; while the list would hold more than
    ortho_max_pair_fraction of all pairs, the step computes the exact term instead.
    'exact': all pairs every step, blockwise, O(ortho_block_size * d_sae) memory in
    forward and backward (about doubles a step's cost at d_sae = 4096, batch 2048).
    'chunked': OrtSAE-style, only pairs inside random chunks of ortho_chunk_size
    latents, a new permutation every step (cost linear in d_sae)."""

    ortho_block_size: int = 1024
    """Rows of the cosine matrix computed at a time (memory knob; does not change the loss)."""

    ortho_chunk_size: int = 4096
    """Latents per chunk in 'chunked' mode (>= 2); changes which pairs are penalised."""

    ortho_margin: float = 0.05
    """'close_pairs': how far below the threshold a pair's |cos| may lie and still be
    listed, in [0, 1]. Larger: longer lists, safer against pairs that move between scans
    (benchmarks/results/speed measures the loss against 'exact' along a training run)."""

    ortho_rescan_every: int = 10
    """'close_pairs': steps between two scans of all pairs (>= 1; 1 scans every step)."""

    ortho_max_pair_fraction: float = 0.05
    """'close_pairs': largest share of the d_sae (d_sae - 1) ordered pairs the list may
    hold, in (0, 1]. Above it the step computes the exact blockwise term instead (the
    same loss; dense kernels are then the faster way, and the list is never built)."""

    contrastive_coefficient: float = 0.3
    """Final weight of the self-contrastive loss (>= 0; 0 turns it off)."""

    contrastive_warm_up_steps: int = 1000
    """Steps over which SAELens ramps the contrastive weight linearly from 0 (>= 0)."""

    projection_dim: int | None = 128
    """k of the fixed Gaussian projection of the similarities (>= 1). None: exact cosine
    similarities in d_in dimensions (the SS-COSAE baseline)."""

    contrastive_temperature: float = 0.1
    """InfoNCE temperature dividing the cosine similarities (> 0)."""

    projection_seed: int = 0
    """Seed of the projection matrix and of the chunk permutations."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def __post_init__(self) -> None:
        _validate(self)
        super().__post_init__()

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        return StandardSAEConfig

    def bind_to_training_run(
        self, total_training_steps: int, train_batch_size: int, arithmetic: str
    ) -> None:
        """Check the run's budget and fill ``ortho_anneal_steps`` from it.

        Called by SAELens's runner configs at construction (see ``registration.py``),
        before any model is loaded. ``arithmetic`` spells out how the step count was
        reached, for the error message.
        """
        if total_training_steps < 1:
            raise ValueError(
                f"ortho_contrastive: {arithmetic} = {total_training_steps} training steps, "
                "so nothing would be trained. Raise the token budget to at least one "
                "batch, or lower the batch size."
            )
        if self.contrastive_coefficient > 0 and total_training_steps < self.contrastive_warm_up_steps:
            raise ValueError(
                f"ortho_contrastive: {arithmetic} = {total_training_steps} training steps, "
                f"fewer than contrastive_warm_up_steps={self.contrastive_warm_up_steps}, so "
                f"the contrastive weight would never reach contrastive_coefficient="
                f"{self.contrastive_coefficient}. Raise the token budget to at least "
                f"{self.contrastive_warm_up_steps * train_batch_size} "
                f"({self.contrastive_warm_up_steps} steps of {train_batch_size}), or lower "
                "contrastive_warm_up_steps."
            )
        if self.contrastive_coefficient > 0 and train_batch_size < 2:
            raise ValueError(
                f"ortho_contrastive: train batch size={train_batch_size} is invalid with "
                "contrastive_coefficient > 0: the self-contrastive loss needs >= 2 inputs "
                "per batch."
            )
        if self.ortho_anneal_steps is None:
            self.ortho_anneal_steps = total_training_steps
            self.add_training_info_to_metadata()


def _validate(cfg: OrthoContrastiveTrainingSAEConfig) -> None:
    """Raise a ValueError naming the field, the value and what is allowed."""

    def bad(field: str, value: Any, allowed: str) -> ValueError:
        return ValueError(f"{field}={value!r} is invalid: {allowed}")

    for field in ("ortho_threshold_start", "ortho_threshold_end"):
        value = getattr(cfg, field)
        if not 0.0 <= value <= 1.0:
            raise bad(field, value, "a |cosine| threshold must lie in [0, 1]")
    if cfg.ortho_threshold_start < cfg.ortho_threshold_end:
        raise bad(
            "ortho_threshold_start",
            cfg.ortho_threshold_start,
            f"it must be >= ortho_threshold_end={cfg.ortho_threshold_end} "
            "(the threshold anneals downwards)",
        )
    for field in ("ortho_coefficient", "contrastive_coefficient", "l1_coefficient"):
        value = getattr(cfg, field)
        if not value >= 0:  # also rejects NaN
            raise bad(field, value, "a loss coefficient must be >= 0")
    if cfg.ortho_mode not in ORTHO_MODES:
        raise bad("ortho_mode", cfg.ortho_mode, f"allowed modes are {', '.join(ORTHO_MODES)}")
    if cfg.ortho_block_size < 1:
        raise bad("ortho_block_size", cfg.ortho_block_size, "it must be >= 1")
    if cfg.ortho_chunk_size < 2:
        raise bad("ortho_chunk_size", cfg.ortho_chunk_size, "a chunk needs >= 2 latents to hold a pair")
    if not 0.0 <= cfg.ortho_margin <= 1.0:
        raise bad("ortho_margin", cfg.ortho_margin, "a |cosine| margin must lie in [0, 1]")
    if cfg.ortho_rescan_every < 1:
        raise bad("ortho_rescan_every", cfg.ortho_rescan_every, "it must be >= 1 step")
    if not 0.0 < cfg.ortho_max_pair_fraction <= 1.0:
        raise bad("ortho_max_pair_fraction", cfg.ortho_max_pair_fraction, "a share of pairs must lie in (0, 1]")
    if cfg.ortho_anneal_steps is not None and cfg.ortho_anneal_steps < 1:
        raise bad("ortho_anneal_steps", cfg.ortho_anneal_steps, "it must be >= 1, or None to use the run's total steps")
    if cfg.contrastive_warm_up_steps < 0:
        raise bad("contrastive_warm_up_steps", cfg.contrastive_warm_up_steps, "it must be >= 0")
    if cfg.projection_dim is not None and cfg.projection_dim < 1:
        raise bad("projection_dim", cfg.projection_dim, "it must be >= 1, or None for exact similarities")
    if not cfg.contrastive_temperature > 0:
        raise bad("contrastive_temperature", cfg.contrastive_temperature, "it must be > 0")


class OrthoContrastiveTrainingSAE(StandardTrainingSAE):
    """``standard`` SAE plus the ``ortho_loss`` and ``contrastive_loss`` terms.

    Buffers (saved in training checkpoints, dropped from the inference model):
    ``projection`` ``(d_in, k)`` when ``projection_dim`` is set, and ``n_steps_trained``,
    the clock of the threshold schedule and of the chunk permutations, written to the
    inference model's metadata as ``training_steps``. In 'close_pairs' mode, two
    non-persistent buffers hold the close-pair list, ``ortho_close_pairs`` ``(P, 2)``
    (None until a scan, or while the list would be over-full), and ``ortho_scan_step``,
    the step of the last scan (-1: none). A checkpoint does not carry them: the first
    step after construction, resume or ``load_state_dict`` scans again.

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
    ortho_close_pairs: torch.Tensor | None
    ortho_scan_step: torch.Tensor

    def __init__(self, cfg: OrthoContrastiveTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)  # type: ignore[arg-type]

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        projection = None
        if self.cfg.projection_dim is not None:
            projection = make_projection(
                self.cfg.d_in,
                self.cfg.projection_dim,
                self.cfg.projection_seed,
                dtype=self.dtype,
                device=self.device,
            )
        self.register_buffer("projection", projection)
        self.register_buffer(
            "n_steps_trained", torch.zeros((), dtype=torch.long, device=self.device)
        )
        self.register_buffer("ortho_close_pairs", None, persistent=False)
        self.register_buffer(
            "ortho_scan_step", torch.full((), -1, dtype=torch.long, device=self.device), persistent=False
        )
        self.register_load_state_dict_post_hook(_forget_close_pairs)

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
        if self.cfg.ortho_anneal_steps is None:
            raise ValueError(
                "ortho_anneal_steps=None: the anneal horizon is unknown. Set it in the "
                "config, or train through SAELens's LanguageModelSAETrainingRunner or "
                "SyntheticSAERunner, whose configs fill it from the token budget."
            )
        return ortho_threshold(
            step,
            self.cfg.ortho_threshold_start,
            self.cfg.ortho_threshold_end,
            self.cfg.ortho_anneal_steps,
        )

    def current_step(self) -> int:
        """Training steps completed before the current one (the schedule clock)."""
        return int(self.n_steps_trained.item())

    def unit_decoder(self) -> torch.Tensor:
        """``W_dec`` with unit-norm rows, ``(d_sae, d_in)``."""
        return self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

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
            ortho_loss = ortho_weight * self._ortho_penalty(self.ortho_threshold_at(step), step)

        contrastive_weight = step_input.coefficients["contrastive"]
        contrastive_loss = zero
        if contrastive_weight > 0:
            contrastive_loss = contrastive_weight * self_contrastive_loss(
                step_input.sae_in,
                sae_out,
                temperature=self.cfg.contrastive_temperature,
                projection_DK=self.projection,
            )
        return {**losses, "ortho_loss": ortho_loss, "contrastive_loss": contrastive_loss}

    def _ortho_penalty(self, tau: float, step: int) -> torch.Tensor:
        D_nd = self.unit_decoder()
        if self.cfg.ortho_mode == "close_pairs":
            pairs_P2 = self._close_pairs_at(step, D_nd.detach())
            if pairs_P2 is not None:
                return ortho_penalty_pairs(D_nd, tau, pairs_P2)
            # Too many close pairs for a list: the same loss, computed densely.
        if self.cfg.ortho_mode != "chunked":
            return ortho_penalty_exact(D_nd, tau, self.cfg.ortho_block_size)
        # A permutation that depends only on (seed, step), so a resumed run draws the same ones.
        generator = torch.Generator(device="cpu").manual_seed(
            self.cfg.projection_seed * 1_000_003 + step
        )
        return ortho_penalty_chunked(
            D_nd, tau, self.cfg.ortho_chunk_size, generator, self.cfg.ortho_block_size
        )

    def _close_pairs_at(self, step: int, D_nd: torch.Tensor) -> torch.Tensor | None:
        """The close-pair list serving ``step``; None while it would be over-full.

        Scans when no scan serves ``step``: after construction or a state-dict load, and
        on the schedule of :meth:`_next_scan_after`. A list serves the steps up to the
        next scheduled one, so it holds the pairs above the lowest threshold of those
        steps minus ``ortho_margin`` (the threshold only decreases).
        """
        scan_step = int(self.ortho_scan_step.item())
        if not 0 <= scan_step <= step < self._next_scan_after(scan_step):
            n = D_nd.shape[0]
            self.ortho_close_pairs = close_pair_scan(
                D_nd,
                self.ortho_threshold_at(self._next_scan_after(step) - 1) - self.cfg.ortho_margin,
                self.cfg.ortho_block_size,
                max_pairs=int(self.cfg.ortho_max_pair_fraction * n * (n - 1)),
            )
            self.ortho_scan_step.fill_(step)
        return self.ortho_close_pairs

    def _next_scan_after(self, step: int) -> int:
        """Scans at steps 1, 2, 4, 8, ... below ``ortho_rescan_every`` (directions move
        fastest right after initialisation), then at its multiples."""
        every = self.cfg.ortho_rescan_every
        if step < every:
            return min(1 << step.bit_length(), every)
        return (step // every + 1) * every

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        step = self.current_step()
        output = super().training_forward_pass(step_input)
        # One device sync per step: a NaN/inf must stop training before the optimizer
        # writes it into the weights (and before anything can be saved from them).
        if not torch.isfinite(output.loss.detach()).item():
            bad = [
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
        with torch.no_grad():
            self.n_steps_trained.fill_(step + 1)
        if step_input.is_logging_step and self.cfg.ortho_anneal_steps is not None:
            tau = self.ortho_threshold_at(step)
            max_abs_cos, frac_above = decoder_pair_stats(
                self.unit_decoder().detach(), tau, self.cfg.ortho_block_size
            )
            output.metrics["ortho_threshold"] = tau
            output.metrics["decoder_max_abs_cos"] = max_abs_cos
            output.metrics["decoder_frac_pairs_above_threshold"] = frac_above
        return output

    @override
    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving_inference(state_dict)
        for key in _TRAINING_ONLY_BUFFERS:
            state_dict.pop(key, None)

    @override
    def save_inference_model(self, path: str | Path) -> tuple[Path, Path]:
        """Write a plain ``standard`` SAE; each file appears whole or not at all.

        The metadata records ``training_steps``, so that evals can tell an SAE trained
        for 4 steps from a trained one.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state_dict = self.state_dict()
        self.process_state_dict_for_saving_inference(state_dict)
        config = self.cfg.get_inference_sae_cfg_dict()
        config["metadata"]["training_steps"] = int(self.n_steps_trained.item())

        weights_path = path / SAE_WEIGHTS_FILENAME
        cfg_path = path / SAE_CFG_FILENAME
        save_file(state_dict, _partial(weights_path))
        _partial(cfg_path).write_text(json.dumps(config))
        os.replace(_partial(weights_path), weights_path)
        os.replace(_partial(cfg_path), cfg_path)
        return weights_path, cfg_path


@dataclass
class OrthoContrastiveSAEConfig(StandardSAEConfig):
    """Config of an ``ortho_contrastive`` training checkpoint opened for inference with
    ``SAE.load_from_disk``. Its weights are those of a ``standard`` SAE; the plugin-free
    artifact is the one ``save_inference_model`` (and SAELens's runner) writes.
    """

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


class OrthoContrastiveSAE(StandardSAE):
    """A training checkpoint opened for inference: a ``standard`` SAE, without the
    training-only buffers."""

    @override
    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_loading(state_dict)
        for key in _TRAINING_ONLY_BUFFERS:
            state_dict.pop(key, None)


def _forget_close_pairs(sae: OrthoContrastiveTrainingSAE, incompatible_keys: Any) -> None:
    """Load-state-dict hook: new weights make the close-pair list stale; scan at the next step."""
    sae.ortho_scan_step.fill_(-1)


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")
