from typing import Any

from trainers.evaluate import cut_at_stop, generate_answers, model_inputs, stop_strings


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


def test_a_long_prompt_loses_its_start_at_evaluation_as_in_training(tiny_config: dict[str, Any]) -> None:
    import torch

    from trainers import model as model_mod
    from trainers.config import from_dict
    from trainers.train import encode

    cfg = from_dict({**tiny_config, "method": "none"})
    tok, model = model_mod.load(model_mod.resolve(cfg), cfg, "cpu", torch.float32)
    long = "Rewrite the date as YYYY-MM-DD, and take care with the month names. Date: March 3rd, 2021\nISO: "
    short = "ISO: "
    ids = tok(long, add_special_tokens=False).input_ids
    given, cut = model_inputs(tok, [long, short], 8)
    assert cut == [True, False]
    assert given == [ids[-8:], tok(short, add_special_tokens=False).input_ids]  # the end of the prompt stays
    answers, flags = generate_answers(model, tok, [long, short], 8, 6, 2, "cpu", None)
    assert flags == cut and len(answers) == 2
    # Training keeps the same end of a prompt that does not fit: what is left before the answer and EOS.
    answer = tok("2021-03-03", add_special_tokens=False).input_ids + [tok.eos_token_id]
    enc = encode(tok, [{"prompt": long, "completion": "2021-03-03"}], max_len=8 + len(answer))
    assert enc.truncated == 1 and enc.ids[0] == ids[-8:] + answer
    assert enc.ids[0][:8] == model_inputs(tok, [long], 8)[0][0]
