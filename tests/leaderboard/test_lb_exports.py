from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from leaderboard.decision import decide
from leaderboard.exports import FILE_NAMES, export, export_all, print_table, to_html, to_markdown
from leaderboard.rank import COLUMNS, rank_runs

EVIL = '<script>alert(1)</script> | "q", x'


@pytest.fixture
def board(frame, make_row):
    ranked = rank_runs(frame(
        make_row("base", "none", 0.40, 0.05),
        make_row(EVIL, "lora", 0.80, 1.0, target_modules="q_proj,<b>v_proj</b>"),
        make_row("lora_b", "lora", 0.78, 0.5),
        make_row("lora_dominated_tied", "lora", 0.77, 0.9),  # neither Pareto nor below: only "tied"
        make_row("[bold]markup[/bold]", "qlora", 0.70, 0.1, status="pruned"),
        make_row("full_d", "full", 0.82, 4.0),
        make_row("failed_e", "lora", None, 0.3, status="failed"),
    ))
    return ranked, decide(ranked)


WARNINGS = ["left out 1 run(s) <b>evaluated</b> elsewhere"]


class PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.cells: list[str] = []
        self.rows = 0
        self.text: list[str] = []
        self.srcs: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append(tag)
        self.srcs += [v or "" for k, v in attrs if k in ("src", "href")]
        if tag == "tr":
            self.rows += 1
        self._in_cell = tag == "td"

    def handle_endtag(self, tag) -> None:
        self._in_cell = False if tag == "td" else self._in_cell

    def handle_data(self, data) -> None:
        self.text.append(data)
        if self._in_cell:
            self.cells.append(data)


def test_csv_parses_back_with_every_column(board, tmp_path) -> None:
    ranked, decision = board
    path = export(ranked, decision, "csv", tmp_path / "out" / "board.csv")
    assert path == tmp_path / "out" / "board.csv"
    back = pd.read_csv(path)
    assert list(back.columns) == list(COLUMNS)
    assert len(back) == len(ranked)
    assert back["run_name"].tolist() == ranked["run_name"].tolist()  # quotes, commas, tags survive
    assert back["test_quality"].tolist()[:5] == pytest.approx(ranked["test_quality"].tolist()[:5])
    assert back["pareto"].dtype == bool and back["pareto"].tolist() == ranked["pareto"].tolist()
    assert back.loc[back["run_name"] == "lora_b", "rank"].item() == 16  # not 16.0


def test_json_holds_rows_with_the_column_names_and_the_decision(board, tmp_path) -> None:
    ranked, decision = board
    path = export(ranked, decision, "json", tmp_path / "board.json", WARNINGS)
    document = json.loads(path.read_text())
    rows = pd.DataFrame(document["rows"])
    required = ["run_id", "run_name", "method", "rank", "alpha", "target_modules", "learning_rate",
                "test_quality", "test_quality_ci_low", "test_quality_ci_high", "cost_usd", "device_hours",
                "quality_per_dollar", "lift_over_baseline", "pareto", "tied_with_best", "below_floor",
                "status", "peak_memory_mb", "adapter_mb", "git_commit", "test_set_sha256"]
    assert set(required) <= set(rows.columns)
    assert len(rows) == len(ranked)
    failed = document["rows"][-1]
    assert failed["run_name"] == "failed_e" and failed["test_quality"] is None  # null, not NaN
    assert failed["quality_per_dollar"] is None and failed["cost_usd"] == 0.3
    assert document["decision"]["text"] == decision.text
    assert document["decision"]["recommended"]["run_name"] == decision.recommended["run_name"]
    assert document["warnings"] == WARNINGS
    assert document["min_quality"] == pytest.approx(0.738)
    assert document["sweeps"] == ["demo"]
    # The same document through pandas' own JSON reader.
    assert pd.read_json(io.StringIO(json.dumps(document["rows"])))["run_name"].tolist() == \
        ranked["run_name"].tolist()


def test_markdown_table_is_escaped_and_complete(board) -> None:
    ranked, decision = board
    text = to_markdown(ranked, decision, WARNINGS)
    assert "<script>" not in text and "<b>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; \\| \"q\", x" in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(ranked)  # header + one line per run
    # Escaped pipes keep every row at the header's column count.
    header_cells = table[0].count(" | ")
    assert all(line.replace("\\|", "").count(" | ") == header_cells for line in table)
    assert "## Decision" in text and "Recommended:" in text


def test_html_is_self_contained_and_escaped(board) -> None:
    ranked, decision = board
    page = to_html(ranked, decision, WARNINGS)
    assert "<script" not in page.lower()  # neither ours nor the run name's
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;evaluated&lt;/b&gt;" in page
    parser = PageParser()
    parser.feed(page)
    parser.close()
    assert "script" not in parser.tags
    assert "b" not in parser.tags  # the <b> in a warning and in target modules stayed text
    assert "style" in parser.tags and "table" in parser.tags
    assert parser.rows == 1 + len(ranked)
    assert any(EVIL in cell for cell in parser.cells)  # shown literally, as text
    # The only external reference is the embedded plot: nothing is fetched from a network.
    assert len(parser.srcs) == 1 and parser.srcs[0].startswith("data:image/png;base64,")
    png = base64.b64decode(parser.srcs[0].split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "Recommended:" in "".join(parser.text)


def test_terminal_table_shows_names_literally(board) -> None:
    ranked, decision = board
    buffer = io.StringIO()
    print_table(ranked, decision, WARNINGS, Console(file=buffer, width=400, color_system=None))
    out = buffer.getvalue()
    assert "[bold]markup[/bold]" in out  # rich markup in a run name is not interpreted
    assert "lora_b" in out and "failed_e" in out and "lora_dominated_tied" in out
    assert "Recommended: lora_b" in out
    assert "warning: left out 1 run(s)" in out


@pytest.mark.parametrize("width", [80, 120])
def test_narrow_terminal_drops_columns_to_fit_and_says_so(board, width) -> None:
    ranked, decision = board
    buffer = io.StringIO()
    print_table(ranked, decision, (), Console(file=buffer, width=width, color_system=None))
    out = buffer.getvalue()
    table = [line for line in out.splitlines() if line[:1] in "┏┃┡│└"]
    assert len(table) >= 3 + len(ranked) and all(len(line) <= width for line in table)
    assert "hidden to fit the terminal: commit, peak MB, device h, run id" in " ".join(out.split())
    assert "id-lora_b" not in out and "0123456789" not in out
    header = table[1]
    assert all(h in header for h in ("run", "quality", "cost", "quality/$", "flags"))


def test_wide_terminal_shows_every_column_and_flags(board) -> None:
    ranked, decision = board
    buffer = io.StringIO()
    print_table(ranked, decision, (), Console(file=buffer, width=400, color_system=None))
    out = buffer.getvalue()
    assert "id-lora_" in out and "hidden" not in out
    lora_b = next(line for line in out.splitlines() if "lora_b" in line)
    assert lora_b.rstrip(" │").endswith("PT")  # Pareto and tied with the best, above the floor
    failed = next(line for line in out.splitlines() if "failed_e" in line)
    assert "failed" in failed and failed.rstrip(" │").endswith("<")


def test_html_marks_the_recommended_row_and_shortens_targets(board) -> None:
    ranked, decision = board
    page = to_html(ranked, decision)
    recommended = [line for line in page.splitlines() if 'class="' in line and "recommended" in line
                   and line.startswith("<tr")]
    assert len(recommended) == 1 and ">lora_b<" in recommended[0]
    assert "<td>q,k,v,o</td>" in page and "q_proj,k_proj" not in page.split("<table>")[1]


def test_export_all_writes_four_files(board, tmp_path) -> None:
    ranked, decision = board
    paths = export_all(ranked, decision, tmp_path / "lb")
    assert sorted(p.name for p in paths) == sorted(FILE_NAMES.values())
    assert all(p.stat().st_size > 200 for p in paths)


def test_table_format_to_a_file_and_stdout(board, tmp_path, capsys) -> None:
    ranked, decision = board
    path = export(ranked, decision, "table", tmp_path / "board.txt")
    assert path is not None and "lora_b" in Path(path).read_text()
    assert export(ranked, decision, "csv") is None
    assert capsys.readouterr().out.startswith("position,run_name,run_id")


def test_unknown_format_is_refused(board) -> None:
    ranked, decision = board
    with pytest.raises(ValueError, match="unknown format 'xlsx'"):
        export(ranked, decision, "xlsx", None)


def test_html_escapes_parameters_and_tags_too(frame, make_row) -> None:
    """Not only run names: every parameter and tag that reaches the page (modules, commit, sweep, metric,
    test-set hash, run id) comes from a config or from MLflow and stays text."""
    script = "<script>alert(2)</script>"
    ranked = rank_runs(frame(
        make_row("base", "none", 0.40, 0.05, sweep=script, metric=script, test_set_sha256=script),
        make_row("lora_a", "lora", 0.80, 1.0, sweep=script, metric=script, test_set_sha256=script,
                 target_modules=script, git_commit=script, run_id=script),
    ))
    page = to_html(ranked, decide(ranked))
    assert "<script" not in page.lower()
    parser = PageParser()
    parser.feed(page)
    parser.close()
    assert "script" not in parser.tags
    text = "".join(parser.text)
    assert script in text  # the sweep name in the title, the modules in the table: shown literally
    assert "<script>al" in parser.cells  # the commit column, cut to 10 characters, still escaped


def test_every_export_carries_val_quality_and_the_selection_split(frame, make_row, tmp_path) -> None:
    # Validation and test disagree, so a format that showed the wrong split would show the wrong number.
    ranked = rank_runs(frame(
        make_row("chosen", "lora", 0.78, 1.0, val_quality=0.861),
        make_row("test_top", "lora", 0.82, 1.0, val_quality=0.702, rank=8),
    ))
    decision = decide(ranked)
    paths = {p.suffix: p for p in export_all(ranked, decision, tmp_path)}
    csv = pd.read_csv(paths[".csv"]).set_index("run_name")
    assert csv.loc["chosen", "val_quality"] == pytest.approx(0.861) and bool(csv.loc["chosen", "best"])
    assert not bool(csv.loc["test_top", "best"])
    document = json.loads(paths[".json"].read_text())
    assert document["selected_on"] == "validation" and document["best_run_id"] == "id-chosen"
    assert {r["run_name"]: r["val_quality"] for r in document["rows"]} == {"chosen": 0.861, "test_top": 0.702}
    assert document["decision"]["selected_on"] == "validation"
    for suffix in (".md", ".html"):
        text = paths[suffix].read_text()
        assert "chosen on validation (val_quality" in text
        assert "0.861" in text and "val quality" in text
    buffer = io.StringIO()
    print_table(ranked, decision, (), Console(file=buffer, width=300, color_system=None))
    out = " ".join(buffer.getvalue().split())
    assert "chosen on validation (val_quality" in out and "0.861" in out
    assert "B best by validation quality" in out


def test_json_export_holds_the_rate_brackets_and_capacity_as_data(frame, make_row, tmp_path) -> None:
    lora = {"target_modules": "attention", "lora_dropout": 0.05}
    ranked = rank_runs(frame(
        make_row("lora-3e-4", "lora", 0.74, 1.0, learning_rate=3e-4, val_curve={10: 0.70, 20: 0.78}, **lora),
        make_row("lora-1e-3", "lora", 0.78, 1.0, learning_rate=1e-3, val_curve={10: 0.75, 20: 0.86}, **lora),
        make_row("lora-3e-3", "lora", None, 0.2, learning_rate=3e-3, status="failed", error="Diverged: loss",
                 **lora),
        make_row("lora-r32", "lora", 0.79, 1.2, learning_rate=1e-3, rank=32, val_curve={10: 0.76, 20: 0.84},
                 **lora),
        make_row("full", "full", 0.85, 5.0, learning_rate=1e-4, val_curve={10: 0.80, 20: 0.85}),
    ))
    path = export(ranked, decide(ranked), "json", tmp_path / "board.json")
    decision = json.loads(path.read_text())["decision"]  # exports write allow_nan=False: no -Infinity in it
    adapter = decision["brackets"]["adapter"]
    assert adapter["bracketed"] is True and adapter["best_rate"] == pytest.approx(1e-3) and adapter["step"] == 20
    assert adapter["above"]["diverged"] is True and adapter["above"]["score"] is None
    assert adapter["below"] == {"rate": 3e-4, "score": 0.78, "label": "lora-3e-4", "closed": True, "edge": False,
                                "diverged": False}
    assert adapter["family"] == {"method": "lora", "rank": 16, "alpha": 32, "target_modules": "attention",
                                 "lora_dropout": 0.05}
    assert decision["brackets"]["full"]["bracketed"] is False
    assert decision["brackets"]["full"]["next_rates"] == pytest.approx([3.33e-5, 3e-4])
    [capacity] = decision["capacity"]
    assert capacity["label"] == "lora-r32" and capacity["config"]["rank"] == 32
    assert capacity["gain"] == pytest.approx(-0.02) and capacity["step"] == 20
    assert decision["escalation_blocked_by"] == "significance"  # no per-example scores, intervals overlap
    # The curves ride along in every row: JSON objects in the JSON rows and in the CSV cells.
    back = pd.read_csv(export(ranked, decide(ranked), "csv", tmp_path / "b.csv")).set_index("run_name")
    assert json.loads(back.loc["lora-1e-3", "val_curve"]) == {"10": 0.75, "20": 0.86}
    assert pd.isna(back.loc["lora-3e-3", "val_curve"])
