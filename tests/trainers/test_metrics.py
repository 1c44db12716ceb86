import pytest

from trainers.metrics import exact_match, infer_labels, label_accuracy, label_note, scorer, token_f1


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
    assert score("Positive", "positive") == 1.0
    assert score("  NEGATIVE ", "negative") == 1.0
    assert score("negative", "positive") == 0.0
    assert score("I cannot say", "neutral") == 0.0


def test_accuracy_needs_the_whole_answer_to_be_the_label() -> None:
    score = label_accuracy(["no", "yes"])
    assert score("no", "no") == 1.0
    assert score("nothing", "no") == 0.0  # a prefix of the answer is not the answer
    assert score("no, never", "no") == 0.0
    assert score("yes", "no") == 0.0
    # A label outside the set is never right, even when it equals the expected text.
    assert label_accuracy(["a", "b"])("c", "c") == 0.0


def test_labels_default_to_the_distinct_completions() -> None:
    assert infer_labels(["no", "Yes", "no ", "yes", "maybe"]) == ["maybe", "no", "Yes"]
    assert infer_labels(["", " "]) == []
    assert label_note(["a", "b"], 200) is None
    assert "exact match" in (label_note([str(i) for i in range(10)], 10) or "")
    assert "300 distinct labels among 400 rows" in (label_note([str(i) for i in range(300)], 400) or "")


def test_unknown_metric_and_missing_labels_are_named() -> None:
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        scorer("bleu")
    with pytest.raises(ValueError, match="label set"):
        scorer("accuracy")
