"""An export is verified before it counts: loaded fresh from its folder by plain transformers/peft, it answers
the locked test set again, greedily, exactly as its trial did (same rendering, truncation, batch size,
max_new_tokens, stop strings, weight and compute dtypes), and the answers are compared with the run's
test_predictions.jsonl. An adapter or a full model must give the same answers, every one; a merged model
(its weights rounded to 16 bits) must score inside the run's test interval, and its agreement is reported.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sweeps.export import Plan


class VerifyError(RuntimeError):
    """The export does not reproduce its run's locked-test predictions."""


@dataclass
class Check:
    n: int  # locked test examples
    differ: int  # answers unlike the run's
    quality: float  # the export's test score
    run_quality: float  # the run's
    ci: tuple[float | None, float | None]  # the run's 95% test interval (from the leaderboard)

    @property
    def agreement(self) -> float:
        return (self.n - self.differ) / self.n if self.n else 1.0


def verify(plan: Plan) -> Check:
    import torch

    from trainers import data as data_mod
    from trainers import evaluate, render
    from trainers.metrics import scorer

    cfg, metrics = plan.cfg, plan.metrics
    recorded = [json.loads(line) for line in (plan.work / "test_predictions.jsonl").read_text().splitlines()
                if line.strip()]  # fmt: skip
    test, sha = data_mod.verify_lock(data_mod.lock_path(cfg.data))
    if sha != metrics["test_set_sha256"] or len(test) != len(recorded):
        raise VerifyError(f"the locked test set at {data_mod.lock_path(cfg.data)} (sha256 {sha[:12]}..., "
                          f"{len(test)} rows) is not the one run {plan.run_id} was scored on "
                          f"({str(metrics['test_set_sha256'])[:12]}..., {len(recorded)} rows): run export from "
                          "the folder the sweep ran in (with the same SWEEPBOARD_CACHE)")  # fmt: skip
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    print(f"verifying: loading the export fresh from {plan.out} on {device}...", flush=True)
    tok, model = _load(plan, device)
    prompts = [render.render_prompt(r, cfg.data, tok) for r in test]
    moved = [i for i, (p, r) in enumerate(zip(prompts, recorded, strict=True)) if p != r["prompt"]]
    if moved:
        raise VerifyError(f"{len(moved)} of {len(test)} locked test prompts render differently from what run "
                          f"{plan.run_id} saw (e.g. example {moved[0]}); the export's tokenizer or the sweep's "
                          "data settings changed since the run")  # fmt: skip
    autocast = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(str(metrics.get("compute_dtype")))
    print(f"verifying: regenerating {len(test)} locked-test answers greedily (batch {cfg.eval_batch_size}, "
          f"max_new_tokens {cfg.max_new_tokens}, compute {metrics.get('compute_dtype')})...", flush=True)
    answers, _cut = evaluate.generate_answers(model, tok, prompts, cfg.max_seq_len - cfg.max_new_tokens,
                                              cfg.max_new_tokens, cfg.eval_batch_size, device, autocast)  # fmt: skip
    stops = evaluate.stop_strings(test, cfg.data.stop)
    answers = [evaluate.cut_at_stop(a, stops) for a in answers]
    quality, _ = evaluate.score(test, answers, scorer(cfg.data.metric, metrics.get("labels")))
    differ = [i for i, (a, r) in enumerate(zip(answers, recorded, strict=True)) if a != r["predicted"]]
    ci = (_number(plan.row.get("test_quality_ci_low")), _number(plan.row.get("test_quality_ci_high")))
    check = Check(len(test), len(differ), quality, float(metrics["test_quality"]), ci)
    print(f"verifying: {check.n - check.differ} of {check.n} answers as the run's ({check.agreement:.1%}), test "
          f"score {quality:.4f} (run {check.run_quality:.4f}), {time.perf_counter() - t0:.0f}s", flush=True)
    if plan.kind != "merged" and differ:
        i = differ[0]
        raise VerifyError(f"{len(differ)} of {len(test)} locked-test predictions differ from run {plan.run_id}'s "
                          f"test_predictions.jsonl, e.g. example {i}: the run answered {recorded[i]['predicted']!r}, "
                          f"the export {answers[i]!r}")  # fmt: skip
    low, high = ci
    if plan.kind == "merged" and low is not None and high is not None and not low - 1e-9 <= quality <= high + 1e-9:
        raise VerifyError(f"the merged model scores {quality:.4f} on the locked test set, outside run "
                          f"{plan.run_id}'s 95% interval [{low:.4f}, {high:.4f}] (the run: {check.run_quality:.4f}): "
                          "merging into the 16-bit base lost too much; ship the adapter instead (drop --merge)")  # fmt: skip
    return check


def _load(plan: Plan, device: str) -> tuple[Any, Any]:
    """Tokenizer and model from the export folder alone, in the dtypes the trial held its weights in."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.model import contiguous_head
    from trainers.trial import base_dtype

    metrics = plan.metrics
    # The dtype the trial held its base in (and QLoRA computed in) under its compute dtype, by the trial's own
    # rule; a merged model is loaded in the dtype its trial held the base in, so only the merge is new.
    autocast = torch.bfloat16 if metrics.get("compute_dtype") == "bfloat16" else None
    dtype = base_dtype(str(metrics["method"]), autocast)
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": metrics.get("attn_implementation") or "sdpa"}
    tok = AutoTokenizer.from_pretrained(plan.out)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # as the trial did
    if plan.kind != "adapter":
        model: Any = AutoModelForCausalLM.from_pretrained(plan.out, **kwargs)
        model.to(device)
    else:
        from peft import PeftModel

        base = json.loads((plan.out / "adapter_config.json").read_text())["base_model_name_or_path"]
        if metrics["method"] == "qlora":
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype,
            )  # fmt: skip
            kwargs["device_map"] = {"": device}
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
        if metrics["method"] == "qlora":
            from peft import prepare_model_for_kbit_training

            # As the trial prepared its 4-bit base (trainers.model): the unquantized weights upcast to fp32.
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        else:
            model.to(device)
        model = PeftModel.from_pretrained(model, str(Path(plan.out)))
    contiguous_head(model)
    return tok, model


def _number(value: Any) -> float | None:
    return None if value is None else float(value)
