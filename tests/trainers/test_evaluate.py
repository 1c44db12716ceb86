from trainers.evaluate import cut_at_stop, stop_strings


def test_single_line_answers_stop_at_the_first_newline() -> None:
    rows = [{"prompt": "p", "completion": "2021-03-04"}]
    stops = stop_strings(rows, None)
    assert stops == ["\n"]
    assert cut_at_stop("2021-03-04\n\nDate: May 5", stops) == "2021-03-04"


def test_multi_line_answers_are_not_cut_unless_configured() -> None:
    rows = [{"prompt": "p", "completion": '{\n "a": 1\n}'}]
    assert stop_strings(rows, None) == []
    assert cut_at_stop('{\n "a": 1\n}', []) == '{\n "a": 1\n}'
    assert stop_strings(rows, ["\\n\\n", "</s>"]) == ["\n\n", "</s>"]
    assert cut_at_stop('{"a": 1}\n\nmore</s>', ["\n\n", "</s>"]) == '{"a": 1}'
