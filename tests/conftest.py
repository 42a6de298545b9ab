import os

# Tests never reach the Hugging Face hub or a wandb server.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# The tests' tensors are tiny: one thread is as fast, and on a shared 2-core machine two
# threads per process were measured 4-8x slower. Subprocesses inherit this too.
os.environ.setdefault("OMP_NUM_THREADS", "1")


# --- SmolLM2 (issue 9): one model load and one activation cache for the whole session -------
# The model and the text must be in the cache (scripts/setup-env.sh fetches them): these
# fixtures fail, never skip, without them.
import pytest  # noqa: E402

SMOLLM2_TEST_HOOK = "blocks.15.hook_resid_post"
SMOLLM2_TEST_TOKENS = 20_000  # the model's forward in the whole suite stays near this


@pytest.fixture(scope="session")
def smollm2():
    from orthosae_plugin.smollm2.model import load_smollm2

    return load_smollm2()


@pytest.fixture(scope="session")
def heldout_tokens(smollm2):
    import torch

    from orthosae_plugin.smollm2.corpus import english_corpus

    return torch.tensor(english_corpus(smollm2.tokenizer, split="heldout", max_tokens=8 * 128)["input_ids"])


@pytest.fixture(scope="session")
def smollm2_activations(smollm2):
    from orthosae_plugin.smollm2.activations import cached_activations

    return cached_activations(SMOLLM2_TEST_HOOK, n_tokens=SMOLLM2_TEST_TOKENS, model=smollm2)


@pytest.fixture(scope="session")
def plugin_free_python():
    """One Python process that never imports the plugin, shared by the tests that load saved
    SAEs without it (``helpers.PluginFreePython``)."""
    from helpers import PluginFreePython

    worker = PluginFreePython()
    yield worker
    worker.close()


@pytest.fixture(scope="session")
def run_without_the_extra(tmp_path_factory):
    """A Python without the ``[smollm2]`` extra that ran the absorption example and tried the
    real-model code, once for the session (``fixtures.light_install``)."""
    from fixtures.light_install import run_without_the_extra as run

    return run(tmp_path_factory.mktemp("without-the-extra"))
