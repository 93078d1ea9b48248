"""Evaluation: multiple-choice scoring (``scoring``), metrics (``metrics``), paired statistics
(``stats``), norms (``norms``), per-layer analyses of editors (``analysis``), the one evaluation
pipeline (``evaluate``: records -> predictions + results with provenance), and lm-eval (``lmeval``,
with its task files in ``tasks``). (The ``evaluate`` function is ``hpr.evaluation.evaluate.evaluate``
or ``hpr.evaluate``: a package attribute of that name would hide the module.)"""

from hpr.evaluation.evaluate import evaluate_task, load_predictions, load_results, read_results
from hpr.evaluation.metrics import flip_rates, predict, summarize
from hpr.evaluation.scoring import Request, score, score_full

__all__ = [
    "Request",
    "evaluate_task",
    "flip_rates",
    "load_predictions",
    "load_results",
    "predict",
    "read_results",
    "score",
    "score_full",
    "summarize",
]
