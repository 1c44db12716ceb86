import pytest

from trainers.metrics import exact_match, label_accuracy, scorer, token_f1


def test_exact_match_ignores_case_and_spacing_only() -> None:
    assert exact_match("  2021-03-04 ", "2021-03-04") == 1.0
    assert exact_match("ABC  def", "abc def") == 1.0
    assert exact_match("2021-03-05", "2021-03-04") == 0.0
    assert exact_match("2021-03-04.", "2021-03-04") == 0.0


def test_token_f1_partial_credit() -> None:
    assert token_f1('{"city": "Paris"}', '{"city": "Paris"}') == 1.0
    assert token_f1("", "") == 1.0
    assert token_f1("a b", "c d") == 0.0
    # 2 of 3 predicted tokens right, 2 of 4 gold tokens found: P=2/3, R=1/2.
    assert token_f1("a b x", "a b c d") == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))


def test_accuracy_over_a_label_set() -> None:
    score = label_accuracy(["positive", "negative", "neutral"])
    assert score("Positive, clearly.", "positive") == 1.0
    assert score("negative", "positive") == 0.0
    assert score("I cannot say", "neutral") == 0.0


def test_unknown_metric_and_missing_labels_are_named() -> None:
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        scorer("bleu")
    with pytest.raises(ValueError, match="label set"):
        scorer("accuracy")
