"""SmolLM2 activations cached once with SAELens; an SAE trains on them and loads without the plugin."""

import json

import torch
from datasets import load_from_disk
from sae_lens import SAE
from torch.testing import assert_close

from orthosae_plugin import OrthoContrastiveTrainingSAEConfig
from orthosae_plugin.smollm2.activations import (
    cache_info,
    cached_activations,
    heldout_metrics,
    smollm2_runner_config,
    smollm2_training_runner,
)
from orthosae_plugin.smollm2.corpus import english_corpus
from orthosae_plugin.smollm2.model import SMOLLM2_MODEL_NAME

SMOLLM2_TEST_HOOK = "blocks.15.hook_resid_post"  # as the session fixture in conftest.py
SMOLLM2_TEST_TOKENS = 20_000


def test_the_cache_holds_positions_1_to_127_of_training_rows(smollm2, smollm2_activations):
    info = cache_info(smollm2_activations)
    assert info["n_tokens"] >= SMOLLM2_TEST_TOKENS and info["seqpos_slice"] == [1, None]
    # made from rows of today's layout, in a folder whose name no older cache can hold
    from orthosae_plugin.smollm2.corpus import CORPUS_LAYOUT
    assert info["corpus_layout"] == CORPUS_LAYOUT and smollm2_activations.name.endswith(CORPUS_LAYOUT)
    cached = load_from_disk(str(smollm2_activations))
    assert cached.features[SMOLLM2_TEST_HOOK].shape == (127, 576)
    first_row = english_corpus(smollm2.tokenizer, split="train", max_tokens=128)["input_ids"][0]
    assert cached[0]["token_ids"] == first_row[1:]
    with torch.no_grad():
        _, cache = smollm2.run_with_cache(torch.tensor([first_row]), names_filter=SMOLLM2_TEST_HOOK, stop_at_layer=16)
    acts_TD = cache[SMOLLM2_TEST_HOOK][0]
    assert acts_TD[0].norm() > 5_000  # position 0: the attention sink, left out
    assert_close(torch.tensor(cached[0][SMOLLM2_TEST_HOOK]), acts_TD[1:], atol=1e-3, rtol=1e-4)
    # a second request for as many tokens or fewer reuses a cache (this one, or a smaller one
    # of the same layout left by an earlier run): no forward pass, no new folder
    caches_before = set(smollm2_activations.parent.iterdir())
    reused = cached_activations(SMOLLM2_TEST_HOOK, n_tokens=10_000, model=None)
    assert reused in caches_before and set(smollm2_activations.parent.iterdir()) == caches_before
    assert cache_info(reused)["corpus_layout"] == CORPUS_LAYOUT


def test_an_sae_trains_on_cached_activations_for_the_full_budget_and_loads_without_the_plugin(
    smollm2, smollm2_activations, tmp_path, plugin_free_python
):
    sae_cfg = OrthoContrastiveTrainingSAEConfig(d_in=576, d_sae=1152, l1_coefficient=5.0, contrastive_warm_up_steps=10)
    cfg = smollm2_runner_config(sae_cfg, smollm2_activations, training_tokens=SMOLLM2_TEST_TOKENS,
                                train_batch_size_tokens=500, output_path=str(tmp_path / "sae"))
    assert cfg.use_cached_activations and cfg.model_name == SMOLLM2_MODEL_NAME
    sae = smollm2_training_runner(cfg, model=smollm2).run()
    assert sae.current_step() == SMOLLM2_TEST_TOKENS // 500
    assert int(sae.n_steps_trained) == SMOLLM2_TEST_TOKENS // 500

    code = (
        "import json, sys; from sae_lens import SAE; "
        f"sae = SAE.load_from_disk({str(tmp_path / 'sae')!r}); "
        "assert not any(m.startswith('orthosae_plugin') for m in sys.modules); "
        "print(json.dumps([sae.cfg.architecture(), sae.cfg.d_sae, sae.cfg.metadata.model_name, "
        "sae.cfg.metadata.hook_name]))"
    )
    result = plugin_free_python.run(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [
        "standard", 1152, SMOLLM2_MODEL_NAME, SMOLLM2_TEST_HOOK]

    metrics = heldout_metrics(SAE.load_from_disk(tmp_path / "sae"), smollm2, SMOLLM2_TEST_HOOK,
                              n_tokens=512, batch_size_prompts=4)
    assert metrics["n_positions_evaluated"] <= 4 * 127
    assert 0.3 < metrics["explained_variance"] < 1
    assert metrics["ce_loss_clean"] < metrics["ce_loss_with_sae"] < metrics["ce_loss_zero_ablation"]
    assert 0 < metrics["ce_loss_recovered"] < 1 and metrics["l0"] > 0


def test_a_cache_of_another_corpus_layout_or_text_is_never_reused(tmp_path, monkeypatch):
    from orthosae_plugin.smollm2.activations import _META, _activations_root, _existing_cache
    from orthosae_plugin.smollm2.corpus import CORPUS_LAYOUT

    monkeypatch.setenv("ORTHOSAE_CACHE", str(tmp_path))
    root = _activations_root("blocks.15.hook_resid_post", 128)

    def fake_cache(name: str, n_tokens: int, **meta) -> None:
        (root / name).mkdir(parents=True)
        (root / name / _META).write_text(json.dumps({"n_tokens": n_tokens, "source": "debian", **meta}))

    fake_cache("old-layout", 50_000)  # written before the layout was recorded
    fake_cache("other-layout", 60_000, corpus_layout="text0-rows1")
    fake_cache("other-text", 70_000, corpus_layout=CORPUS_LAYOUT, source="/some/folder")
    assert _existing_cache("blocks.15.hook_resid_post", 128, 20_000, "debian") is None
    fake_cache("big", 90_000, corpus_layout=CORPUS_LAYOUT)
    fake_cache("small", 30_000, corpus_layout=CORPUS_LAYOUT)
    assert _existing_cache("blocks.15.hook_resid_post", 128, 20_000, "debian") == root / "small"
    assert _existing_cache("blocks.15.hook_resid_post", 128, 40_000, "debian") == root / "big"
    assert _existing_cache("blocks.15.hook_resid_post", 128, 95_000, "debian") is None
