"""Writes the saved runs under tests/data/saved_runs/ that tests/test_saved_runs.py
resumes: one SAELens runner checkpoint (taken inside the run) per case of
``helpers.SAVED_RUN_CASES``. They prove that checkpoints written by earlier versions of
the plugin still load and resume; the committed ones were written by version 0.1.0,
before the architecture was split into modules. It writes only the cases that have no
folder yet, so the committed ones stay those of the version that wrote them:

    cd tests/data && PYTHONPATH=../.. python write_saved_runs.py
"""

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import SAVED_RUN_CASES, saved_run_runner  # noqa: E402

if __name__ == "__main__":
    for case in SAVED_RUN_CASES:
        folder = Path("saved_runs") / case
        if folder.exists():
            continue
        saved_run_runner(case, checkpoint_path=str(folder / "run"), n_checkpoints=1, output_path=None).run()
        (checkpoint,) = (folder / "run").glob("*/*")  # drop the run's random id from the path
        checkpoint.rename(folder / "checkpoint")
        shutil.rmtree(folder / "run")
