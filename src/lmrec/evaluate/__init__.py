"""Evaluation: metric functions, the full-ranking evaluator, beyond-accuracy, significance, reports."""

from lmrec.evaluate.evaluator import EvalResult, evaluate

__all__ = ["EvalResult", "evaluate"]
