"""Rows as they come: read a data file (or the built-in task) into raw rows, and drop duplicate prompts.

Rows are raw: no prompt template or chat template is applied here, so the identity of a row (what the locked
test set is checked on) never depends on how it is rendered for the model. Two shapes:
plain {"prompt": str, "completion": str}, and chat {"messages": [{"role", "content"}, ...], "completion": str}
where `messages` is the conversation before the final assistant turn and `completion` is that turn.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainers.config import DataConfig
from trainers.metrics import normalize
from trainers.task import make_dates

Row = dict[str, Any]
SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
KINDS = {"json": "JSON Lines (one JSON object per line) or a JSON list", "csv": "CSV with a header row",
         "parquet": "Parquet"}  # fmt: skip
MESSAGES = "messages"  # the common role/content chat column (OpenAI, Hugging Face chat datasets)
MAX_DUPLICATE_SHARE = 0.10  # more repeats than this is a file problem, not a few stray copies


class DataError(ValueError):
    """A dataset or lock problem, naming the file and the fix."""


@dataclass(frozen=True)
class Loaded:
    rows: list[Row]
    format: str  # plain | chat
    sha256: str | None  # of the file's bytes; None for a built-in task
    path: str  # resolved file path, or the built-in name


@dataclass(frozen=True)
class Deduped:
    rows: list[Row]
    duplicates: int  # later copies of a prompt whose copies agree on the completion (the first is kept)
    conflicting: int  # every copy of a prompt whose copies disagree on the completion


def load_rows(cfg: DataConfig) -> list[Row]:
    """The raw rows of `data.source`, in file order."""
    return read(cfg, "source").rows


def read(cfg: DataConfig, key: str = "source") -> Loaded:
    """Read `data.<key>` (source or test_source) into raw rows; every problem names the key and the fix."""
    source = str(getattr(cfg, key))
    if source.startswith("builtin:"):
        if key != "source" or source != "builtin:dates":
            raise DataError(f"data.{key}: {source!r}: unknown built-in task; the built-in is builtin:dates "
                            "(data.source only), a test file must be a .jsonl, .csv or .parquet file")
        if cfg.format == "chat":
            raise DataError("data.format: 'chat': builtin:dates has plain prompt/completion rows: use auto or "
                            "plain")
        return Loaded(make_dates(cfg.n_examples, seed=cfg.seed), "plain", None, source)
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"data.{key}: {source!r}: no such file; give a .jsonl, .csv or .parquet file")
    builder = SUFFIXES.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"data.{key}: {source!r}: unsupported type; use one of {', '.join(SUFFIXES)}")
    if path.stat().st_size == 0:
        raise DataError(f"data.{key}: {source!r}: the file is empty; give rows with the columns "
                        f"{cfg.prompt_column!r} and {cfg.completion_column!r} (or {MESSAGES!r} for chat)")
    columns, table = _load_table(path, builder, cfg, key)
    fmt = resolve_format(cfg, columns)
    rows = _chat_rows(table, source, key) if fmt == "chat" else _plain_rows(table, cfg, source, key)
    return Loaded(rows, fmt, file_sha256(path), str(path.resolve()))


def resolve_format(cfg: DataConfig, columns: list[str]) -> str:
    """auto: chat when the file has a messages column and neither prompt nor completion column."""
    if cfg.format != "auto":
        return cfg.format
    plain = cfg.prompt_column in columns or cfg.completion_column in columns
    return "chat" if MESSAGES in columns and not plain else "plain"


def _load_table(path: Path, builder: str, cfg: DataConfig, key: str) -> tuple[list[str], Any]:
    import datasets  # imported late: it is slow to import and only bring-your-own data needs it

    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many types for unreadable files
        root = exc  # datasets wraps the reader's error ("An error occurred while generating the dataset")
        while root.__cause__ is not None or root.__context__ is not None:
            root = root.__cause__ or root.__context__  # type: ignore[assignment]
        reason = (str(root).strip().splitlines() or [type(root).__name__])[0][:200]
        kind, columns = KINDS[builder], f"{cfg.prompt_column!r} and {cfg.completion_column!r}"
        raise DataError(
            f"data.{key}: {str(getattr(cfg, key))!r}: could not read it as {kind} ({reason}); "
            f"check that the file is valid {kind} with the columns {columns} (or {MESSAGES!r} for chat)"
        ) from exc
    return list(ds.column_names), ds


def _plain_rows(ds: Any, cfg: DataConfig, source: str, key: str) -> list[Row]:
    missing = [c for c in (cfg.prompt_column, cfg.completion_column) if c not in ds.column_names]
    if missing:
        chat = f", or data.format: chat for its {MESSAGES!r} column" if MESSAGES in ds.column_names else ""
        raise DataError(
            f"data.{key}: {source!r}: missing column(s) {', '.join(missing)}; it has "
            f"{', '.join(ds.column_names) or 'no columns'}: set data.prompt_column / data.completion_column{chat}"
        )
    return [
        {"prompt": str(p), "completion": str(c)}
        for p, c in zip(ds[cfg.prompt_column], ds[cfg.completion_column], strict=True)
        if p is not None and c is not None
    ]


def _chat_rows(ds: Any, source: str, key: str) -> list[Row]:
    if MESSAGES not in ds.column_names:
        raise DataError(f"data.{key}: {source!r}: data.format chat needs a {MESSAGES!r} column (a list of "
                        f"{{role, content}}); it has {', '.join(ds.column_names)}: use data.format plain")
    rows: list[Row] = []
    bad: list[str] = []
    for number, messages in enumerate(ds[MESSAGES], start=1):
        row, problem = chat_row(messages)
        if problem:
            bad.append(f"row {number}: {problem}")
        elif row is not None:
            rows.append(row)
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise DataError(
            f"data.{key}: {source!r}: {len(bad)} chat row(s) cannot be trained on: {'; '.join(bad[:3])}{more}. "
            "A chat row is a conversation that ends with the assistant's reply (the completion to learn): "
            "fix or drop those rows"
        )
    return rows


def chat_row(messages: Any) -> tuple[Row | None, str | None]:
    """One chat row from its messages, or the reason it is not one. A row without messages is skipped."""
    if messages is None:
        return None, None
    if isinstance(messages, str):  # a CSV cell holds the list as JSON text
        try:
            messages = json.loads(messages)
        except ValueError:
            return None, "messages is text that is not a JSON list"
    if not isinstance(messages, list) or not messages:
        return None, "messages must be a non-empty list of {role, content}"
    turns = []
    for m in messages:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            return None, f"a message is not {{role: str, content: str}}: {str(m)[:80]}"
        turns.append({"role": m["role"], "content": m["content"]})
    if turns[-1]["role"] != "assistant":
        return None, f"the last message is from {turns[-1]['role']!r}, not the assistant"
    if len(turns) == 1:
        return None, "only an assistant message; there is no prompt before it"
    return {"messages": turns[:-1], "completion": turns[-1]["content"]}, None


def row_key(row: Row) -> str:
    """A raw row's identity: its prompt (or its prompt messages) with case, Unicode form and whitespace
    normalised. Test/train overlap and duplicates are decided on it, before any rendering."""
    if "messages" in row:
        return "chat:" + json.dumps([[m["role"], normalize(m["content"])] for m in row["messages"]],
                                    ensure_ascii=False)  # fmt: skip
    return normalize(row["prompt"])


def content_sha256(rows: list[Row]) -> str:
    """sha256 of raw rows in canonical form: [[prompt, completion], ...] for plain rows (the form locks have
    always hashed), [[[[role, content], ...], completion], ...] for chat rows."""
    canonical = json.dumps([_canonical(r) for r in rows], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _canonical(row: Row) -> list[Any]:
    if "messages" in row:
        return [[[m["role"], m["content"]] for m in row["messages"]], row["completion"]]
    return [row["prompt"], row["completion"]]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dedup(rows: list[Row], key: str, source: str) -> Deduped:
    """Drop repeated prompts before the test set is carved, so no prompt can be on both sides of the cut:
    the first copy is kept when the copies agree on the completion; all are dropped when they disagree
    (no one answer to learn or score). A file that is mostly repeats is refused instead."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(row_key(r), []).append(i)
    repeats = len(rows) - len(groups)
    if rows and repeats / len(rows) > MAX_DUPLICATE_SHARE:
        first = next(g for g in groups.values() if len(g) > 1)
        raise DataError(
            f"data.{key}: {source!r}: {repeats} of {len(rows)} rows ({repeats / len(rows):.0%}) repeat an earlier "
            f"prompt (after whitespace/case normalisation), more than {MAX_DUPLICATE_SHARE:.0%}, e.g. rows "
            f"{first[0] + 1} and {first[1] + 1}: {show(rows[first[0]])[:80]!r}; check the columns "
            "(data.prompt_column) or remove the repeated rows"
        )
    keep: list[int] = []
    duplicates = conflicting = 0
    for group in groups.values():
        answers = {normalize(rows[i]["completion"]) for i in group}
        if len(answers) > 1:
            conflicting += len(group)
        else:
            keep.append(group[0])
            duplicates += len(group) - 1
    return Deduped([rows[i] for i in sorted(keep)], duplicates, conflicting)


def show(row: Row) -> str:
    """What a person recognises a row by: its prompt, or its last prompt message."""
    return row["messages"][-1]["content"] if "messages" in row else row["prompt"]
