"""Quality metrics: one score in [0, 1] per example, averaged. Per-example scores are kept so the
leaderboard can compute confidence intervals (Wilson for proportions, bootstrap for F1)."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence

METRICS = ("exact_match", "token_f1", "accuracy")


def normalize(text: str) -> str:
    """Case, Unicode form and whitespace are not part of the answer; everything else is."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def exact_match(predicted: str, expected: str) -> float:
    return float(normalize(predicted) == normalize(expected))


def _tokens(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", normalize(text))


def token_f1(predicted: str, expected: str) -> float:
    """SQuAD-style bag-of-tokens F1; punctuation counts as tokens so JSON structure is scored."""
    pred, gold = _tokens(predicted), _tokens(expected)
    if not pred and not gold:
        return 1.0
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def label_accuracy(labels: Sequence[str]) -> Callable[[str, str], float]:
    """Accuracy over a label set: the prediction is the first label it starts with, else wrong."""
    by_norm = sorted((normalize(label) for label in labels), key=len, reverse=True)

    def score(predicted: str, expected: str) -> float:
        pred = normalize(predicted)
        chosen = next((label for label in by_norm if pred.startswith(label)), None)
        return float(chosen is not None and chosen == normalize(expected))

    return score


def scorer(name: str, labels: Sequence[str] | None = None) -> Callable[[str, str], float]:
    if name == "exact_match":
        return exact_match
    if name == "token_f1":
        return token_f1
    if name == "accuracy":
        if not labels:
            raise ValueError(
                "metric 'accuracy' needs a label set: set data.labels: [label, ...] in the config"
            )
        return label_accuracy(labels)
    raise ValueError(f"unknown metric {name!r}: use one of {', '.join(METRICS)}")
