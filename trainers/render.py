"""Rendering: what the model sees of a raw row. One function for training, validation and the locked test set.

Rows stay raw everywhere else (the lock, overlap checks, hashes); only here do they become model input:
- plain rows {"prompt", "completion"}: `data.prompt_template` fills in the prompt; with `data.chat_template`
  that text becomes a user turn, rendered by the model's own chat template;
- chat rows {"messages": [...], "completion"}: the model's chat template renders the conversation.
Either way the generation prompt (the assistant turn's opening) ends the text, and the target is the raw
completion: training appends EOS to it, evaluation generates it.
"""

from __future__ import annotations

from typing import Any

from trainers.config import DEFAULT_MODEL, DataConfig, TrialConfig

Row = dict[str, Any]  # plain {"prompt", "completion"} or chat {"messages", "completion"}
# Both built-in models carry SmolLM2-Instruct's tokenizer, chat template included (checked in the tests).
BUILTIN_WITH_CHAT_TEMPLATE = (DEFAULT_MODEL, "builtin:tiny")


class RenderError(ValueError):
    """The rows cannot be rendered for this model as configured: names the keys and the fix."""


def data_format(rows: list[Row]) -> str:
    """Chat for rows of messages, plain for prompt/completion rows."""
    return "chat" if any("messages" in r for r in rows) else "plain"


def uses_chat_template(data_cfg: DataConfig, rows: list[Row]) -> bool:
    return data_format(rows) == "chat" or data_cfg.chat_template


def render_prompt(row: Row, data_cfg: DataConfig, tokenizer: Any) -> str:
    """The model input for a raw row, up to where the answer starts."""
    if "messages" in row:
        _require_template(tokenizer, data_cfg, "chat")
        messages = row["messages"]
    else:
        text = data_cfg.prompt_template.format(prompt=row["prompt"])
        if not data_cfg.chat_template:
            return text
        _require_template(tokenizer, data_cfg, "plain")
        messages = [{"role": "user", "content": text}]
    return str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def render(rows: list[Row], data_cfg: DataConfig, tokenizer: Any) -> list[dict[str, str]]:
    """Rendered prompt + raw completion, what training and teacher-forced validation encode."""
    return [{"prompt": render_prompt(r, data_cfg, tokenizer), "completion": r["completion"]} for r in rows]


def template_problem(
    has_template: bool, data_cfg: DataConfig, fmt: str, model: str = "the model"
) -> str | None:
    """Why rows of this format cannot be rendered as configured (with or without a chat template), or None."""
    if fmt == "chat" and data_cfg.prompt_template != "{prompt}":
        return (
            f"data.prompt_template: {data_cfg.prompt_template!r}: the rows are chat messages, which the model's "
            "chat template renders; a prompt template would be ignored: leave data.prompt_template out "
            "(or put the instruction into a system or user message)"
        )
    if fmt != "chat" and not data_cfg.chat_template:
        return None
    if has_template:
        return None
    if fmt == "chat":
        return (
            f"data.format: chat: the rows are chat messages, but the tokenizer of {model} has no chat template "
            "to render them: use a chat/instruct model whose tokenizer has one, or give plain prompt/completion "
            "rows (data.format: plain, with data.prompt_column/data.completion_column)"
        )
    return (
        f"data.chat_template: true: the tokenizer of {model} has no chat template to render the prompt as a "
        "user turn: set data.chat_template: false (the prompt template alone makes the input), or use a "
        "chat/instruct model"
    )


def check(cfg: TrialConfig, rows: list[Row]) -> None:
    """Before anything is spent (a trial before it loads the model, a sweep before any trial): can the rows be
    rendered for this model? Reads only the tokenizer, and only when a chat template is needed."""
    fmt = data_format(rows)
    if not uses_chat_template(cfg.data, rows):
        return
    has_template = True
    if cfg.model not in BUILTIN_WITH_CHAT_TEMPLATE:
        tokenizer = _tokenizer(cfg)
        if tokenizer is None:
            return  # unreadable here: the model check reports it (a sweep) or loading does (a trial)
        has_template = bool(getattr(tokenizer, "chat_template", None))
    problem = template_problem(has_template, cfg.data, fmt, repr(cfg.model))
    if problem is not None:
        raise RenderError(problem)


def _require_template(tokenizer: Any, data_cfg: DataConfig, fmt: str) -> None:
    name = repr(getattr(tokenizer, "name_or_path", None) or "the model")
    problem = template_problem(bool(getattr(tokenizer, "chat_template", None)), data_cfg, fmt, name)
    if problem is not None:
        raise RenderError(problem)


def _tokenizer(cfg: TrialConfig) -> Any:
    from transformers import AutoTokenizer

    from trainers import model as model_mod

    try:
        return AutoTokenizer.from_pretrained(model_mod.resolve(cfg), trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError):
        return None
