"""SAEBench's feature-absorption eval on any SAELens SAE and any model, offline, with an alarm:
the public names in one place.

* the eval: :func:`run_absorption_eval`, :func:`run_absorption_eval_seeds`
  (:mod:`orthosae_plugin.evals.absorption_eval`, whose docstring says what it changes
  relative to SAEBench's ``run_eval`` and why);
* reading results: :func:`load_output`, :func:`get_alarm`, :func:`get_vocabulary`,
  :func:`format_summary`, :class:`EvalSpread` (:mod:`.absorption_report`, :mod:`.alarm`);
* loading a model by name: :func:`load_model` (:mod:`.models`);
* the command line ``orthosae-absorption``: :func:`main` (:mod:`.absorption_cli`).
"""

from __future__ import annotations

from orthosae_plugin.evals.absorption_cli import main
from orthosae_plugin.evals.absorption_eval import (
    EVAL_SEEDS_KEY,
    AbsorptionEvalError,
    result_path,
    run_absorption_eval,
    run_absorption_eval_seeds,
)
from orthosae_plugin.evals.absorption_report import (
    VOCABULARY_KEY,
    EvalSpread,
    format_spread,
    format_summary,
    get_vocabulary,
    load_output,
)
from orthosae_plugin.evals.alarm import AlarmThresholds, get_alarm
from orthosae_plugin.evals.models import load_model
from orthosae_plugin.evals.saebench_fixes import check_hook, fold_decoder_norms, probe_batch_size
from orthosae_plugin.evals.steps import training_steps_of

__all__ = [
    "EVAL_SEEDS_KEY",
    "VOCABULARY_KEY",
    "AbsorptionEvalError",
    "AlarmThresholds",
    "EvalSpread",
    "check_hook",
    "fold_decoder_norms",
    "format_spread",
    "format_summary",
    "get_alarm",
    "get_vocabulary",
    "load_model",
    "load_output",
    "main",
    "probe_batch_size",
    "result_path",
    "run_absorption_eval",
    "run_absorption_eval_seeds",
    "training_steps_of",
]
