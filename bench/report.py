"""bench/REPORT.md and its plots, from the results `python -m bench` gathered."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_report(results: dict[str, Any], out: Path) -> Path:
    lines = ["# sweepboard benchmarks", ""]
    meta = results.get("meta", {})
    lines += [
        f"Run {meta.get('date', '?')} at commit `{meta.get('git_commit', '?')}` on {meta.get('cpu', '?')} "
        f"({meta.get('cpu_count', '?')} cores), torch {meta.get('torch', '?')}; written by `make bench` "
        f"({meta.get('bench_seconds', 0) / 60:.1f} min). Ratios are measured side by side in this one run.",
        *(["Parts run again since (`python -m bench --only ...`): "
           + ", ".join(f"{k} {v}" for k, v in meta["rerun"].items()) + "."] if meta.get("rerun") else []),
        "",
        "## Goals",
        "",
        "| key | value | goal | met |",
        "|---|---|---|---|",
    ]
    for key, v in results.get("goals", {}).items():
        lines.append(f"| `{key}` | {_num(v['value'])} | {v['goal']} | {'yes' if v['met'] else '**no**'} |")
    lines += _overhead(results.get("overhead"), out)
    lines += _throughput(results.get("throughput"))
    lines += _search(results.get("search"), out)
    lines += _memory(results.get("memory"))
    lines += _disk(results.get("disk"))
    lines += _gpu(results.get("gpu"))
    path = out / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _overhead(o: dict[str, Any] | None, out: Path) -> list[str]:
    if not o:
        return []
    s = o["seconds"]
    lines = [
        "", "## 1. Sweep overhead", "",
        f"{o['trials']} trials of a sweep on the embedded default, one at a time; each trial's wall time is the "
        "driver's view (its MLflow run opens when Ray starts it and closes once its results are logged).", "",
        f"**compute share {o['compute_share']:.3f}**: training steps, validation and test generation took "
        f"{s['compute_seconds']:.0f} s of the {o['trials_span_seconds']:.0f} s from the first trial's start to "
        f"the last one's end (gaps between trials included); {o['compute_share_in_trials']:.3f} of the "
        "trials' own wall time.", "",
        "| trial | wall s | compute s | load s | tokenise s | checkpoints s | Ray + MLflow + other s | share |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for t in o["per_trial"]:
        lines.append(
            f"| {t['method']} | {t['wall_seconds']:.0f} | {t['compute_seconds']:.0f} | {t['load_seconds']:.1f} | "
            f"{t['tokenize_seconds']:.1f} | {t['checkpoint_seconds']:.1f} | {t['ray_mlflow_other_seconds']:.1f} | "
            f"{t['compute_share']:.3f} |"
        )
    if "sweep_wall_seconds" in o:
        lines += ["", f"The whole sweep (Ray start, lock check, baseline, trials, leaderboard) took "
                      f"{o['sweep_wall_seconds']:.0f} s."]  # fmt: skip
    return lines


def _throughput(t: dict[str, Any] | None) -> list[str]:
    if not t:
        return []
    tps, loss, pad = t["tokens_per_second"], t["mean_train_loss"], t["padding_share"]
    return [
        "", "## 2. Trainer speed", "",
        f"The production-default LoRA trial ({t['steps']} steps, batch {t['batch_size']}, fp32, "
        f"{t['threads']} threads), ours and a plain Hugging Face Trainer + PEFT script, alternated "
        f"{t['rounds']} rounds in one process (median tokens/s).", "",
        "| trainer | tokens/s | padded share of positions | mean train loss |", "|---|---|---|---|",
        f"| sweepboard | {tps['sweepboard']:.1f} | {pad['sweepboard']:.3f} | {loss['sweepboard']:.4f} |",
        f"| HF Trainer + PEFT | {tps['hf_trainer']:.1f} | {pad['hf_trainer']:.3f} | {loss['hf_trainer']:.4f} |",
        "", f"**ratio {t['ratio_vs_hf_trainer']:.2f}**; the train losses differ by "
        f"{100 * t['loss_relative_difference']:.1f}% (different batch order, same loss: mean cross-entropy over "
        "answer tokens).",
    ]  # fmt: skip


def _search(s: dict[str, Any] | None, out: Path) -> list[str]:
    if not s:
        return []
    d = s["dollars_to_target"]
    lines = [
        "", "## 3. Search efficiency", "",
        f"Replayed on {s['rows']} recorded trials (of a {s.get('grid_size', '?')}-configuration grid, "
        f"bench/record/trials.jsonl), {s['seeds']} seeds per search, budget ${s['budget_usd']:.4f} "
        f"(the whole grid once). Best test quality {s['best_test_quality']:.3f} ({s['best_run']}); "
        f"target 95% of it: {s['target_test_quality']:.3f}.", "",
        "| search | median $ to target | trials run (mean) |", "|---|---|---|",
    ]  # fmt: skip
    for name in ("ours", "plain_tpe_asha", "random", "grid"):
        if name in d:
            lines.append(f"| {name} | {_num(d[name]['median'], 4)} | {s['trials_run'][name]:.1f} |")
    lines += ["", f"**cost ratio vs random {_num(s['cost_ratio_vs_random'])}** (vs grid "
                  f"{_num(s['cost_ratio_vs_grid'])}).", ""]  # fmt: skip
    if "decision_agreement" in s:
        plain = s.get("plain_tpe_asha") or {}
        lines += [f"At the default sweep's {s.get('max_trials')} trials: **decision agreement "
                  f"{_num(s['decision_agreement'])}** (the table's answer: "
                  f"{'escalate' if s.get('truth_escalate') else 'stay with the adapter'}; {s.get('escalated')} of "
                  f"{s['seeds']} replayed sweeps escalated), **regret {_num(s['regret'])}** (the best test "
                  "quality minus that of the run picked by validation, median). Plain TPE and ASHA, the same "
                  f"search without its fine-tuning rules: agreement {_num(plain.get('decision_agreement'))}, "
                  f"regret {_num(plain.get('regret'))}, cost ratio vs random "
                  f"{_num(plain.get('cost_ratio_vs_random'))}.", ""]  # fmt: skip
    shares = s.get("by_target_share") or {}
    if shares:
        lines += ["The same ratio for other targets (a share of the best test quality):", "",
                  "| target | test quality | ours $ | random $ | grid $ | ours / random |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for share, r in shares.items():
            m = r["median_dollars"]
            lines.append(f"| {float(share):.0%} | {r['target_test_quality']:.3f} | {_num(m['ours'], 4)} | "
                         f"{_num(m['random'], 4)} | {_num(m['grid'], 4)} | {_num(r['cost_ratio_vs_random'])} |")
        lines.append("")
    plot = _regret_plot(s, out)
    if plot:
        lines += [f"![regret versus dollars]({plot.name})"]
    return lines


def _disk(d: dict[str, Any] | None) -> list[str]:
    if not d:
        return []
    return ["", f"**Disk: {d['default_sweep_gb']:.3f} GB** left by that sweep ({d['files']} files; goal <= 3 GB): "
            f"{d['final_models_gb']:.3f} GB of final models (adapter folders, full fine-tuning's safetensors "
            f"model), {d['training_state_gb']:.3f} GB of training state (optimizer, trainable weights)."]


def _memory(m: dict[str, Any] | None) -> list[str]:
    if not m:
        return []
    lines = ["", "## 4. Memory per method", "", "| method | peak memory MB | weights MB |", "|---|---|---|"]
    for method in ("none", "lora", "qlora", "full"):
        if f"{method}_mb" in m:
            lines.append(f"| {method} | {m[f'{method}_mb']:.0f} | {m.get(f'{method}_weights_mb', 0):.0f} |")
    if "qlora_over_lora_weights" in m:
        lines += ["", f"QLoRA holds its weights in {m['qlora_over_lora_weights']:.2f} of LoRA's. Peak memory is "
                      "the process's sampled RSS on CPU (CUDA's allocator peak on a GPU)."]  # fmt: skip
    return lines


def _gpu(g: dict[str, Any] | None) -> list[str]:
    if not g:
        return []
    if g.get("available") is False:
        return ["", "## 5. GPU", "", g.get("note", "not measured")]
    device = g.get("device", "?")
    name = device.get("name", "?") if isinstance(device, dict) else device
    lines = ["", "## 5. GPU", "", f"From bench/gpu_results.json (measured {g.get('date', '?')} on {name}; "
             f"{g.get('model', 'the default trial')}, so no quality is reported):", ""]  # fmt: skip
    methods = g.get("methods", {})
    if methods:
        lines += ["| method | tokens/s | wall s | peak memory MB | weights MB | cost $ |", "|---|---|---|---|---|---|"]
        for name, r in methods.items():
            lines.append(f"| {name} | {_num(r.get('tokens_per_second'), 0)} | {_num(r.get('wall_seconds'), 1)} | "
                         f"{_num(r.get('peak_memory_mb'), 0)} | {_num(r.get('weights_mb'), 0)} | "
                         f"{_num(r.get('cost_usd'), 4)} |")  # fmt: skip
    return lines


def _regret_plot(s: dict[str, Any], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = s["regret_curve"]
    x = curve["dollars"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, color in (("ours", "tab:blue"), ("random", "tab:orange"), ("grid", "tab:gray")):
        ax.plot(x, curve[name]["median"], label=f"{name} (median)", color=color)
        ax.fill_between(x, curve[name]["q25"], curve[name]["q75"], color=color, alpha=0.2)
    ax.axhline(s["best_test_quality"] - s["target_test_quality"], color="black", linestyle="--", linewidth=0.8,
               label="95% of best")  # fmt: skip
    ax.set_xlabel("dollars spent")
    ax.set_ylabel("regret (best test quality - answer's)")
    ax.set_title(f"Search replay on {s['rows']} recorded trials, {s['seeds']} seeds")
    ax.legend()
    fig.tight_layout()
    path = out / "search_regret.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "not reached"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
