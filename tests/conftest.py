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
