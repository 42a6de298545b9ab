"""The run's budget and the anneal horizon, and the SAELens hooks that see them.

SAELens has no hook through which an SAE config sees the run's token budget, and its
runners load the model before they build the SAE. :func:`install_budget_hooks` wraps two
places:

- the ``__post_init__`` of SAELens's runner configs (``LanguageModelSAERunnerConfig``,
  ``SyntheticSAERunnerConfig`` and, for each of its SAEs, ``MultiSAETrainingRunnerConfig``),
  so that a bad budget is refused before any model is loaded;
- ``SAETrainer.__init__``, which every SAELens runner goes through (``MultiSAETrainer``
  builds one per SAE), so that the anneal horizon is derived from the run that actually
  trains, not from whichever config was built first.

Both check that the batch size and the budget are integers (batch >= 1), so that the
division cannot fail, then call :func:`bind_to_training_run` with the step count and the
arithmetic behind it. Configs of other architectures are untouched. Every hook is
installed once: importing or reloading the package twice changes nothing.

A resumed run meets the horizon once more: :func:`check_resumed_horizon` refuses a
checkpoint whose derived horizon differs from the new run's.

When ``SAETrainer`` starts, :func:`warn_if_threshold_unmeetable` also warns once (a
``ThresholdBelowChanceWarning``) when the end threshold is one that the decoder's
geometry will not let it meet.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from pathlib import Path
from typing import Any, Callable

from sae_lens.config import LanguageModelSAERunnerConfig
from sae_lens.multi_sae_training_runner import MultiSAETrainingRunnerConfig
from sae_lens.synthetic.synthetic_sae_runner import SyntheticSAERunnerConfig
from sae_lens.training.sae_trainer import SAETrainer

from orthosae_plugin.bases import BATCH_THRESHOLD_BASES
from orthosae_plugin.config import ARCHITECTURE, OrthoContrastiveTrainingSAEConfig
from orthosae_plugin.validation import invalid, is_integer

# Largest weight that BatchTopK's running threshold may still give its zero start at the
# end of a run (it is the JumpReLU threshold of the saved model).
MAX_THRESHOLD_START_WEIGHT = 0.05

_HOOK_MARK = "_orthosae_budget_hook"

# Multiple of the chance level of |cos| (1 / sqrt(d_in)) below which an end threshold is
# warned about: 2.4 keeps the seed's 0.05 at d_in = 2304 (Gemma-2-2B, 2.4 / 48 = 0.05).
CHANCE_MULTIPLE = 2.4


class ThresholdBelowChanceWarning(UserWarning):
    """``ortho_threshold_end`` is one that the decoder's geometry will not let it meet."""


def threshold_warning(cfg: OrthoContrastiveTrainingSAEConfig) -> str | None:
    """Why ``cfg.ortho_threshold_end`` cannot be met, or None when it can (or when the
    thresholded term is off: ``ortho_coefficient = 0`` or ``ortho_mode='ortsae'``).

    Two unit vectors in random directions of ``d_in`` dimensions have ``|cos|`` of about
    ``1 / sqrt(d_in)`` (the chance level), and no ``d_sae > d_in`` unit rows can all keep
    ``|cos|`` below the Welch bound ``sqrt((d_sae - d_in) / (d_in (d_sae - 1)))``. An end
    threshold under ``CHANCE_MULTIPLE`` x chance, or under the Welch bound, leaves many
    pairs above it in any dictionary: the term then acts on most pairs rather than on
    near-duplicate latents only. That is a fact worth a warning, not a fault: on the
    ground-truth benchmark such a threshold absorbed less than the restricted one, and on
    SmolLM2-135M the two ended alike (docs/method.md).
    """
    if cfg.ortho_coefficient == 0 or cfg.ortho_mode == "ortsae":
        return None
    d_in, d_sae, tau = cfg.d_in, cfg.d_sae, cfg.ortho_threshold_end
    chance = 1 / math.sqrt(d_in)
    welch = math.sqrt((d_sae - d_in) / (d_in * (d_sae - 1))) if d_sae > d_in else 0.0
    floor = CHANCE_MULTIPLE * chance
    if tau >= floor * (1 - 1e-9) and tau >= welch:
        return None
    why = (
        f"below the Welch bound {welch:.4f} for d_sae={d_sae}, d_in={d_in}, so no decoder can meet it"
        if tau < welch
        else f"{tau / chance:.2f}x the chance level of |cos| for d_in={d_in} (1/sqrt({d_in}) = "
        f"{chance:.4f}; Welch bound {welch:.4f}), so random directions already reach it"
    )
    return (
        f"ortho_contrastive: ortho_threshold_end={tau:g} is {why}: the orthogonality penalty "
        f"acts on most decoder pairs, not only on near-duplicate latents. To restrict it to "
        f"near-duplicates, set ortho_threshold_end={CHANCE_MULTIPLE:g}/sqrt(d_in) = {max(floor, welch):.4f} "
        f"(the default's 0.05 at d_in=2304) and ortho_threshold_start >= it. Measured: on a "
        f"synthetic hierarchy the restricted penalty absorbed more than the default; on "
        f"SmolLM2-135M the two ended alike."
    )


def warn_if_threshold_unmeetable(cfg: OrthoContrastiveTrainingSAEConfig) -> None:
    """Warn (once per call: SAELens's ``SAETrainer`` calls it once per run) when
    :func:`threshold_warning` finds a reason."""
    message = threshold_warning(cfg)
    if message is not None:
        warnings.warn(message, ThresholdBelowChanceWarning, stacklevel=3)


def check_training_run(
    cfg: OrthoContrastiveTrainingSAEConfig, total_training_steps: int, train_batch_size: int, arithmetic: str
) -> None:
    """Refuse a run that ``cfg`` cannot train; changes nothing.

    ``arithmetic`` spells out how the step count was reached, for the error message.
    """
    if total_training_steps < 1:
        raise ValueError(
            f"ortho_contrastive: {arithmetic} = {total_training_steps} training steps, "
            "so nothing would be trained. Raise the token budget to at least one "
            "batch, or lower the batch size."
        )
    if cfg.contrastive_coefficient > 0 and total_training_steps < cfg.contrastive_warm_up_steps:
        raise ValueError(
            f"ortho_contrastive: {arithmetic} = {total_training_steps} training steps, "
            f"fewer than contrastive_warm_up_steps={cfg.contrastive_warm_up_steps}, so "
            f"the contrastive weight would never reach contrastive_coefficient="
            f"{cfg.contrastive_coefficient}. Raise the token budget to at least "
            f"{cfg.contrastive_warm_up_steps * train_batch_size} "
            f"({cfg.contrastive_warm_up_steps} steps of {train_batch_size}), or lower "
            "contrastive_warm_up_steps."
        )
    if cfg.contrastive_coefficient > 0 and train_batch_size < 2:
        raise ValueError(
            f"ortho_contrastive: train batch size={train_batch_size} is invalid with "
            f"contrastive_coefficient={cfg.contrastive_coefficient} > 0: the "
            "self-contrastive loss needs >= 2 inputs per batch."
        )
    if cfg.sparsity_base in BATCH_THRESHOLD_BASES:
        check_threshold_settles(cfg.topk_threshold_lr, total_training_steps, arithmetic, cfg.sparsity_base)


def bind_to_training_run(
    cfg: OrthoContrastiveTrainingSAEConfig, total_training_steps: int, train_batch_size: int, arithmetic: str
) -> None:
    """Check the run's budget, and derive ``cfg.ortho_anneal_steps`` from it unless the
    user set it.

    Called by SAELens's runner configs at construction, before any model is loaded, and
    again when SAELens's ``SAETrainer`` is built, i.e. by the run that actually trains: a
    derived horizon is re-derived each time, so ``dataclasses.replace(cfg,
    training_tokens=...)``, an edited JSON budget or one SAE config reused across runs
    never keeps a stale one.
    """
    check_training_run(cfg, total_training_steps, train_batch_size, arithmetic)
    if cfg.ortho_anneal_steps is None or cfg.ortho_anneal_steps_derived:
        cfg.ortho_anneal_steps = total_training_steps
        cfg.ortho_anneal_steps_derived = True
        cfg.add_training_info_to_metadata()


def check_threshold_settles(
    lr: float, total_training_steps: int, arithmetic: str, base: str = "batchtopk"
) -> None:
    """Refuse a BatchTopK run too short for its running threshold to leave its start.

    SAELens starts ``topk_threshold`` at 0 and moves it by ``lr`` of the way to each
    batch's smallest active pre-activation, so after ``N`` steps the zero start still
    weighs ``(1 - lr)^N``. A saved JumpReLU with a threshold pulled towards 0 fires far
    more latents than training did (L0 49 instead of 8 after 60 steps at lr 0.01 on the
    toy model), and nothing else would say so.
    """
    start_weight = (1 - lr) ** total_training_steps
    if start_weight <= MAX_THRESHOLD_START_WEIGHT:
        return
    steps_needed = math.ceil(math.log(MAX_THRESHOLD_START_WEIGHT) / math.log(1 - lr))
    lr_needed = 1 - MAX_THRESHOLD_START_WEIGHT ** (1 / total_training_steps)
    raise ValueError(
        f"ortho_contrastive: {arithmetic} = {total_training_steps} training steps is too "
        f"few for sparsity_base={base!r} at topk_threshold_lr={lr}: the saved JumpReLU "
        f"threshold would still carry (1 - {lr})^{total_training_steps} = "
        f"{start_weight:.2f} of its zero start (at most {MAX_THRESHOLD_START_WEIGHT} "
        f"allowed), so the saved SAE would fire far more latents than k. Train for at "
        f"least {steps_needed} steps, or raise topk_threshold_lr to at least {lr_needed:.3g}."
    )


def check_resumed_horizon(cfg: OrthoContrastiveTrainingSAEConfig, cfg_path: Path) -> None:
    """Refuse to resume from the checkpoint whose config is ``cfg_path`` when its derived
    anneal horizon differs from this run's, which would bend the threshold schedule
    halfway through. An explicit horizon stays as given."""
    if not (cfg.ortho_anneal_steps_derived and cfg_path.is_file()):
        return
    saved = json.loads(cfg_path.read_text()).get("ortho_anneal_steps")
    if saved is not None and saved != cfg.ortho_anneal_steps:
        raise ValueError(
            f"ortho_anneal_steps: the checkpoint {str(cfg_path.parent)!r} was trained with "
            f"an anneal horizon of {saved} steps, and this run's budget gives "
            f"{cfg.ortho_anneal_steps}; resuming would bend the threshold schedule. Resume "
            f"with the checkpoint's budget, or set ortho_anneal_steps={saved} (or another "
            "value) explicitly."
        )


def check_batch_and_budget(batch_field: str, batch_size: Any, budget_field: str, budget: Any) -> None:
    """The run's batch size and budget (SAELens's runner/trainer fields): integers,
    batch >= 1 and budget >= 0, checked before the step count is divided out of them."""
    if not is_integer(batch_size) or batch_size < 1:
        raise invalid(batch_field, batch_size, "the training batch must be an integer >= 1")
    if not is_integer(budget) or budget < 0:
        raise invalid(budget_field, budget, "the training budget must be an integer >= 0")


# --- the hooks into SAELens --------------------------------------------------------------

# (SAE config, batch-size field, budget field, prefix naming the SAE in a message)
_Binding = tuple[Any, str, str, str]


def install_budget_hooks() -> None:
    """Wrap SAELens's runner configs and ``SAETrainer`` (safe to call any number of times)."""
    _install_config_hook(
        LanguageModelSAERunnerConfig,
        lambda cfg: [(cfg.sae, "train_batch_size_tokens", "training_tokens", "")],
    )
    _install_config_hook(
        SyntheticSAERunnerConfig,
        lambda cfg: [(cfg.sae, "batch_size", "training_samples", "")],
    )
    _install_config_hook(
        MultiSAETrainingRunnerConfig,
        lambda cfg: [
            (sae_cfg, "train_batch_size_tokens", "training_tokens", f"saes[{name!r}]: ")
            for name, sae_cfg in cfg.saes.items()
        ],
    )
    _install_trainer_hook()


def _bind(
    sae_cfg: Any, run_cfg: Any, batch_field: str, budget_field: str, prefix: str, check_only: bool = False
) -> None:
    """Check the run's batch and budget, then hand the step count to ``sae_cfg``."""
    if not _is_ortho_contrastive(sae_cfg):
        return
    batch_size, budget = getattr(run_cfg, batch_field), getattr(run_cfg, budget_field)
    try:
        check_batch_and_budget(batch_field, batch_size, budget_field, budget)
        if check_only:
            return
        bind_to_training_run(sae_cfg, budget // batch_size, batch_size,
                             f"{budget_field}={budget} // {batch_field}={batch_size}")
    except ValueError as error:
        if not prefix:
            raise
        raise ValueError(f"{prefix}{error}") from None


def _is_ortho_contrastive(sae_cfg: Any) -> bool:
    # By architecture name rather than class: a reloaded module's class is a new object.
    architecture = getattr(sae_cfg, "architecture", None)
    return callable(architecture) and architecture() == ARCHITECTURE


def _install_config_hook(config_cls: type, bindings: Callable[[Any], list[_Binding]]) -> None:
    original = config_cls.__post_init__
    if getattr(original, _HOOK_MARK, False):
        return

    @functools.wraps(original)
    def __post_init__(self: Any) -> None:
        # The batch is checked before SAELens's own post-init, which divides by it.
        for sae_cfg, batch_field, budget_field, prefix in bindings(self):
            _bind(sae_cfg, self, batch_field, budget_field, prefix, check_only=True)
        original(self)
        for sae_cfg, batch_field, budget_field, prefix in bindings(self):
            _bind(sae_cfg, self, batch_field, budget_field, prefix)

    setattr(__post_init__, _HOOK_MARK, True)
    config_cls.__post_init__ = __post_init__


def _install_trainer_hook() -> None:
    """Bind the SAE's config to the trainer's budget before SAELens builds the trainer
    (its optimizer, schedulers and coefficient schedulers)."""
    original = SAETrainer.__init__
    if getattr(original, _HOOK_MARK, False):
        return

    @functools.wraps(original)
    def __init__(self: Any, cfg: Any, sae: Any, *args: Any, **kwargs: Any) -> None:
        _bind(sae.cfg, cfg, "train_batch_size_samples", "total_training_samples", "")
        if _is_ortho_contrastive(sae.cfg):
            warn_if_threshold_unmeetable(sae.cfg)
        original(self, cfg, sae, *args, **kwargs)

    setattr(__init__, _HOOK_MARK, True)
    SAETrainer.__init__ = __init__  # type: ignore[method-assign]
