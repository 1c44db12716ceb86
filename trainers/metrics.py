"""Quality metrics: one score in [0, 1] per example, averaged. Per-example scores are kept so the
leaderboard can compute confidence intervals (Wilson for proportions, bootstrap for F1)."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

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
    """Accuracy over a label set: right when the whole answer (normalised, already cut at the stop string) is
    a label and is the expected one. A prefix does not count: "nothing" is not the label "no"."""
    known = {normalize(label) for label in labels}

    def score(predicted: str, expected: str) -> float:
        pred = normalize(predicted)
        return float(pred in known and pred == normalize(expected))

    return score


def infer_labels(completions: Iterable[str]) -> list[str]:
    """The label set of a classification task: its distinct completions (normalised), sorted."""
    by_norm: dict[str, str] = {}
    for text in completions:
        by_norm.setdefault(normalize(text), text.strip())
    return [by_norm[k] for k in sorted(by_norm) if k]


def label_note(labels: Sequence[str], n_rows: int) -> str | None:
    """A word when the label set looks like free text rather than classes: accuracy then scores exactly as
    exact_match does, which is not wrong, but the user should know."""
    if n_rows and len(labels) >= n_rows:
        return (
            f"metric accuracy: all {n_rows} completions are distinct, so every one is its own label and accuracy "
            "is exact match; use data.metric: exact_match or token_f1 if this is not a classification task"
        )
    if n_rows and len(labels) > max(50, n_rows // 2):
        return (
            f"metric accuracy: {len(labels)} distinct labels among {n_rows} rows; if this is not a "
            "classification task, data.metric: exact_match or token_f1 says so better"
        )
    return None


def choose_labels(
    metric: str, explicit: Sequence[str] | None, rows: Sequence[Mapping[str, Any]], test: Sequence[Mapping[str, Any]]
) -> tuple[list[str] | None, list[str]]:
    """The label set accuracy scores with (None for other metrics): data.labels where given, else the distinct
    completions of all rows; and what the user should hear about it."""
    if metric != "accuracy":
        return None, []
    labels = list(explicit) if explicit else infer_labels(str(r["completion"]) for r in rows)
    notes = []
    note = label_note(labels, len(rows))
    if note is not None:
        notes.append(f"note: {note}")
    known = {normalize(label) for label in labels}
    outside = sum(normalize(str(r["completion"])) not in known for r in test)
    if outside:
        notes.append(
            f"warning: {outside} of {len(test)} test answers are not in data.labels, so no prediction can match "
            "them: add those labels, or leave data.labels out to use the data's"
        )
    return labels, notes


def scorer(name: str, labels: Sequence[str] | None = None) -> Callable[[str, str], float]:
    if name == "exact_match":
        return exact_match
    if name == "token_f1":
        return token_f1
    if name == "accuracy":
        if not labels:
            raise ValueError(
                "metric 'accuracy' needs a label set: set data.labels: [label, ...], or leave it out to "
                "use the distinct completions of the data"
            )
        return label_accuracy(labels)
    raise ValueError(f"unknown metric {name!r}: use one of {', '.join(METRICS)}")
