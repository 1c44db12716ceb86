"""Rendering raw rows into model input: one function for training, validation and test, on the tiny model's
real tokenizer (SmolLM2-Instruct's, chat template included)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from trainers import render
from trainers.config import DataConfig, from_dict
from trainers.render import RenderError, render_prompt
from trainers.train import IGNORE, encode

CHAT_ROW = {
    "messages": [
        {"role": "system", "content": "You sort support tickets."},
        {"role": "user", "content": "My card was charged twice."},
    ],
    "completion": "billing",
}


@pytest.fixture(scope="module")
def tiny_folder() -> Path:
    from tests.trainers.conftest import MODEL_CACHE
    from trainers import model as model_mod

    cfg = from_dict({"model": "builtin:tiny", "cache_dir": str(MODEL_CACHE)})
    return Path(model_mod.resolve(cfg))


@pytest.fixture
def tok(tiny_folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_folder)


def no_template_folder(tiny_folder: Path, tmp_path: Path) -> Path:
    """The tiny model without its chat template, as a base (non-instruct) model comes."""
    folder = tmp_path / "base-model"
    shutil.copytree(tiny_folder, folder, ignore=shutil.ignore_patterns("chat_template.jinja", "model.safetensors"))
    (folder / "model.safetensors").symlink_to(tiny_folder / "model.safetensors")
    return folder


def test_template_renders_train_and_eval_the_same(tok: Any) -> None:
    data = DataConfig(prompt_template="Question: {prompt}\nAnswer: ")
    rows = [{"prompt": "What is 2 plus 2?", "completion": "4"}, {"prompt": "Say hi", "completion": "hi"}]
    rendered = render.render(rows, data, tok)  # what training and validation encode
    assert [r["prompt"] for r in rendered] == ["Question: What is 2 plus 2?\nAnswer: ", "Question: Say hi\nAnswer: "]
    assert [r["completion"] for r in rendered] == ["4", "hi"]  # the target stays the raw completion
    # What evaluation feeds the model for the same row is what training put before the answer.
    enc = encode(tok, rendered, max_len=256)
    for row, ids, labels in zip(rows, enc.ids, enc.labels, strict=True):
        n_prompt = labels.index(next(x for x in labels if x != IGNORE))
        assert ids[:n_prompt] == tok(render_prompt(row, data, tok), add_special_tokens=False).input_ids
        assert ids[n_prompt:] == tok(row["completion"], add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert enc.truncated == 0
    # The default template is the prompt as it is.
    assert render_prompt(rows[0], DataConfig(), tok) == "What is 2 plus 2?"


def test_chat_rows_are_rendered_by_the_models_chat_template(tok: Any) -> None:
    prompt = render_prompt(CHAT_ROW, DataConfig(), tok)
    assert prompt == tok.apply_chat_template(CHAT_ROW["messages"], add_generation_prompt=True, tokenize=False)
    assert "<|im_start|>system\nYou sort support tickets.<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>user\nMy card was charged twice.<|im_end|>\n<|im_start|>assistant\n")
    # The target is the raw last assistant message and EOS, which for this model closes the assistant turn.
    enc = encode(tok, render.render([CHAT_ROW], DataConfig(), tok), max_len=256)
    answer = [x for x in enc.labels[0] if x != IGNORE]
    assert tok.decode(answer) == "billing<|im_end|>"
    assert render.data_format([CHAT_ROW]) == "chat"


def test_plain_rows_as_a_user_turn(tok: Any) -> None:
    data = DataConfig(prompt_template="Ticket: {prompt}", chat_template=True)
    prompt = render_prompt({"prompt": "refund please", "completion": "billing"}, data, tok)
    assert prompt.endswith("<|im_start|>user\nTicket: refund please<|im_end|>\n<|im_start|>assistant\n")
    assert render.data_format([{"prompt": "p", "completion": "c"}]) == "plain"


def test_a_model_without_a_chat_template_is_refused_with_the_fix(tok: Any) -> None:
    tok.chat_template = None
    with pytest.raises(RenderError, match=r"data.format: chat: .*tiny-llama' has no chat template .*\(data.format: plain"):
        render_prompt(CHAT_ROW, DataConfig(), tok)
    with pytest.raises(RenderError, match=r"data.chat_template: true: .* set data.chat_template: false"):
        render_prompt({"prompt": "p", "completion": "c"}, DataConfig(chat_template=True), tok)
    # Without a chat template to use, plain rows render as before.
    assert render_prompt({"prompt": "p", "completion": "c"}, DataConfig(prompt_template="> {prompt}"), tok) == "> p"


def test_a_prompt_template_on_chat_rows_is_refused(tok: Any) -> None:
    with pytest.raises(RenderError, match="data.prompt_template: 'Q: {prompt}': the rows are chat messages"):
        render_prompt(CHAT_ROW, DataConfig(prompt_template="Q: {prompt}"), tok)


def test_check_reads_the_tokenizer_of_a_local_model_before_anything_is_spent(
    tiny_folder: Path, tmp_path: Path
) -> None:
    base = no_template_folder(tiny_folder, tmp_path)
    plain = [{"prompt": "p", "completion": "c"}]
    render.check(from_dict({"model": str(base)}), plain)  # no chat template needed: fine
    with pytest.raises(RenderError, match=f"data.chat_template: true: the tokenizer of '{base}' has no chat"):
        render.check(from_dict({"model": str(base), "data": {"chat_template": True}}), plain)
    with pytest.raises(RenderError, match="data.format: chat"):
        render.check(from_dict({"model": str(base)}), [CHAT_ROW])
    render.check(from_dict({"model": str(tiny_folder), "data": {"chat_template": True}}), [CHAT_ROW])
    render.check(from_dict({"model": "builtin:tiny", "data": {"chat_template": True}}), [CHAT_ROW])
