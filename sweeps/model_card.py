"""The model card an export writes as DIR/README.md: what the model is, how well it did on what, how it was
chosen, what it cost, and how to serve and load it."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sweeps.export import Plan
    from sweeps.export_check import Check

METHODS = {"lora": "LoRA", "qlora": "QLoRA (4-bit NF4 base)", "full": "full fine-tuning"}
KINDS = {"adapter": "a PEFT LoRA adapter", "merged": "the LoRA adapter merged into the 16-bit (bfloat16) base model",
         "model": "a fine-tuned model"}  # fmt: skip


def serve_command(plan: Plan) -> str:
    if plan.kind == "adapter":
        return f"serve it: vllm serve {plan.base} --enable-lora --lora-modules {plan.name}={plan.out}"
    return f"serve it: vllm serve {plan.out}"


def render(plan: Plan, check: Check) -> str:
    m, row = plan.metrics, plan.row
    low, high = check.ci
    interval = f" (95% interval {low:.4f} to {high:.4f}, {row.get('ci_method') or 'n/a'})" if low is not None \
        and high is not None else ""  # fmt: skip
    lines = [
        f"# {plan.name}: {METHODS.get(m['method'], m['method'])} of {m.get('model')}",
        "",
        f"{KINDS[plan.kind][0].upper() + KINDS[plan.kind][1:]}, exported by `sweepboard export` on {dt.date.today().isoformat()} from "
        f"run `{plan.run_id}` (trial `{row.get('trial_id')}`) of sweep `{plan.name}`.",
        "",
        "## Model",
        "",
        f"- Base model: `{plan.base}` (`{m.get('model')}` in the sweep config)"
        + (f", sha256 of its config and weights `{m['base_model_sha256']}`" if m.get("base_model_sha256") else ""),
        f"- Method: {METHODS.get(m['method'], m['method'])}; {_settings(m)}",
        f"- Trained in: weights {m.get('weight_dtype')}, compute {m.get('compute_dtype')}"
        + ("; this folder holds the merged weights in bfloat16" if plan.kind == "merged" else ""),
        "",
        "## Quality",
        "",
        f"- Locked test set: {m.get('n_test')} examples, sha256 `{m.get('test_set_sha256')}`; metric "
        f"{m.get('metric')}",
        f"- Test quality of the run: {float(m['test_quality']):.4f}{interval}",
        f"- Validation quality: {_num(m.get('val_quality'))}; how it was chosen: {plan.reason}. The test score is "
        "reported, never used to choose.",
        f"- Verified on export: loaded fresh from this folder, it answered the locked test set again greedily "
        f"with the trial's settings: {check.n - check.differ} of {check.n} answers as the run's "
        f"({check.agreement:.1%}), test score {check.quality:.4f}.",
        "",
        "## Cost",
        "",
        f"- ${float(m.get('cost_usd') or 0):.4f} for the trial, {_num(m.get('device_hours'))} device hours on "
        f"{m.get('device_name') or m.get('device')}, {_num(m.get('wall_seconds'), 0)} s",
        f"- MLflow: run `{plan.run_id}`, experiment `{plan.name}`, tracking URI `{plan.tracking_uri}`",
        "",
        "## Serve it",
        "",
        "```bash",
        serve_command(plan).removeprefix("serve it: "),
        "```",
        "",
        "## Load it",
        "",
        "```python",
        *_load_lines(plan),
        "```",
        "",
        f"Prompts: the model was trained and scored on prompts rendered as the sweep's data settings say "
        f"({_rendering(plan)}); greedy decoding, at most {plan.cfg.max_new_tokens} new tokens.",
        "",
    ]
    return "\n".join(lines)


def _settings(m: dict[str, Any]) -> str:
    parts = []
    if m["method"] in ("lora", "qlora"):
        parts += [f"rank {m.get('rank')}", f"alpha {m.get('alpha')}", f"targets {m.get('target_modules')}",
                  f"dropout {m.get('lora_dropout')}"]  # fmt: skip
    parts += [f"learning rate {m.get('learning_rate')}", f"{m.get('steps_done')} steps of batch {m.get('batch_size')}"
              f" x {m.get('grad_accum')}", f"max_seq_len {m.get('max_seq_len')}"]  # fmt: skip
    return ", ".join(parts)


def _rendering(plan: Plan) -> str:
    data = plan.cfg.data
    template = "the tokenizer's chat template" if data.chat_template or plan.metrics.get("data_format") == "chat" \
        else "no chat template"  # fmt: skip
    return f"prompt template {data.prompt_template!r}, {template}"


def _load_lines(plan: Plan) -> list[str]:
    head = ["from transformers import AutoModelForCausalLM, AutoTokenizer"]
    if plan.kind == "adapter":
        return [*head, "from peft import PeftModel", "",
                f'tok = AutoTokenizer.from_pretrained("{plan.out}")',
                *(["# the run held its base in 4-bit NF4: for its answers exactly, also pass",
                   "# quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=\"nf4\", "
                   "bnb_4bit_use_double_quant=True)"] if plan.metrics["method"] == "qlora" else []),
                f'base = AutoModelForCausalLM.from_pretrained("{plan.base}")',
                f'model = PeftModel.from_pretrained(base, "{plan.out}")']  # fmt: skip
    return [*head, "", f'tok = AutoTokenizer.from_pretrained("{plan.out}")',
            f'model = AutoModelForCausalLM.from_pretrained("{plan.out}")']  # fmt: skip


def _num(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"
