"""Loading the model an absorption eval runs on, by name (``orthosae-absorption --model``).

Kept apart from the eval itself (:mod:`orthosae_plugin.evals.absorption`), which takes any
``HookedTransformer`` you already hold.
"""

from __future__ import annotations

import torch
from sae_bench.sae_bench_utils import general_utils
from sae_bench.sae_bench_utils.activation_collection import LLM_NAME_TO_DTYPE
from transformer_lens import HookedTransformer
from transformer_lens.loading_from_pretrained import get_official_model_name

from orthosae_plugin.evals.planted import PLANTED_MODEL_NAME, build_planted_model
from orthosae_plugin.smollm2 import model as smollm
from orthosae_plugin.smollm2.model import SMOLLM2_MODEL_NAME


def one_line(message: object) -> str:
    """`message` on one line (user errors are printed as one line, never a traceback)."""
    return " ".join(str(message).split())


def load_model(name: str, device: str = "cpu", dtype: str | None = None) -> HookedTransformer:
    """Load the model an SAE is evaluated on, by name.

    ``"planted-first-letter"`` builds the offline planted model (default
    :class:`~orthosae_plugin.evals.planted.PlantedModelConfig`);
    ``"smollm2-135m-instruct-q4_1"`` loads SmolLM2-135M-Instruct offline through
    ``orthosae_plugin.smollm2.model.load_smollm2``; any other name goes to
    ``HookedTransformer.from_pretrained_no_processing`` (the hub, or the local Hugging Face
    cache with ``HF_HUB_OFFLINE=1``), in SAEBench's dtype for that model unless given.

    Raises:
        ValueError: one line naming the model and the problem (unknown name, or a known
            one that cannot be loaded here).
    """
    if name == PLANTED_MODEL_NAME:
        return build_planted_model(device=device).model
    torch_dtype = general_utils.str_to_dtype(dtype or LLM_NAME_TO_DTYPE.get(name, "float32"))
    if name == SMOLLM2_MODEL_NAME:
        try:
            return smollm.load_smollm2(device=device, dtype=torch_dtype)
        except Exception as error:  # noqa: BLE001 (its own errors say how to fix them)
            raise ValueError(f"--model {name!r}: cannot load it: {one_line(error)}") from error
    try:
        get_official_model_name(name)
    except ValueError as error:
        raise ValueError(
            f"--model {name!r}: unknown model; allowed: {PLANTED_MODEL_NAME!r}, "
            f"{SMOLLM2_MODEL_NAME!r}, or a TransformerLens model name such as 'gpt2' or "
            "'gemma-2-2b'") from error
    try:
        return HookedTransformer.from_pretrained_no_processing(name, device=device,
                                                               dtype=torch_dtype)
    except Exception as error:  # noqa: BLE001 (hub, cache and conversion errors alike)
        raise ValueError(f"--model {name!r}: cannot load it ({type(error).__name__}: "
                         f"{one_line(error)[:300]})") from error
