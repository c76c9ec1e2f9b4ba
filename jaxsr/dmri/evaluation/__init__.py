"""Whole-volume evaluation on the test subjects: the scoring protocol and one run's evaluation
(`protocol`), the score records of a comparison (`records`) and the comparison's tables and
figures (`comparison`)."""

from jaxsr.dmri.evaluation.comparison import evaluate_comparison
from jaxsr.dmri.evaluation.protocol import (Method, classical_methods, evaluate, evaluated_volumes,
                                            validation_scores)
from jaxsr.dmri.evaluation.records import ScoreRecords

__all__ = ["Method", "ScoreRecords", "classical_methods", "evaluate", "evaluate_comparison",
           "evaluated_volumes", "validation_scores"]
