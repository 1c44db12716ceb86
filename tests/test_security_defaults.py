"""Security defaults: trust_remote_code off unless a config sets it (and passed to every from_pretrained as
given), the MLflow UI and a local Ray bound to no public interface unless asked."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
SMOKE = REPO / "sweeps" / "configs" / "smoke.yaml"


def test_trust_remote_code_is_off_unless_the_config_sets_it() -> None:
    from trainers.config import ConfigError, TrialConfig, from_dict, load

    assert TrialConfig().trust_remote_code is False
    assert from_dict({}).trust_remote_code is False
    assert from_dict({"trust_remote_code": True}).trust_remote_code is True
    with pytest.raises(ConfigError, match="trust_remote_code: 'maybe': expected true or false"):
        from_dict({"trust_remote_code": "maybe"})  # a typo never switches it on (or off)
    assert load(SMOKE).trust_remote_code is False  # nor do the built-in configs


@pytest.mark.parametrize("trust", [False, True])
def test_trust_remote_code_reaches_every_from_pretrained_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trust: bool
) -> None:
    import torch
    import transformers

    from trainers import model as model_mod
    from trainers.config import from_dict

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = model_mod.resolve(from_dict({"model": "builtin:tiny", "cache_dir": str(CACHE / "models")}))
    seen: list[tuple[str, Any]] = []
    for cls, method in [(transformers.AutoConfig, "from_pretrained"), (transformers.AutoTokenizer, "from_pretrained"),
                        (transformers.AutoModelForCausalLM, "from_pretrained"),
                        (transformers.AutoModelForCausalLM, "from_config")]:  # fmt: skip
        real = getattr(cls, method)

        def spy(*args: Any, _real: Any = real, _name: str = f"{cls.__name__}.{method}", **kwargs: Any) -> Any:
            seen.append((_name, kwargs.get("trust_remote_code", "<not passed>")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, method, spy)
    cfg = from_dict({"model": folder, "method": "lora", "trust_remote_code": trust})
    names = model_mod.check(cfg)  # the sweep's check before any spend: config and an empty skeleton
    assert names is not None and {"q_proj", "v_proj"} <= names
    model_mod.load(folder, cfg, "cpu", torch.float32)  # what a trial loads
    called = {name for name, _ in seen}
    assert {"AutoConfig.from_pretrained", "AutoTokenizer.from_pretrained", "AutoModelForCausalLM.from_pretrained",
            "AutoModelForCausalLM.from_config"} <= called  # fmt: skip
    assert all(value is trust for _, value in seen), seen


def test_make_ui_binds_to_localhost_unless_told_otherwise() -> None:
    def dry_run(*extra: str) -> str:
        done = subprocess.run(["make", "-n", "ui", *extra], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return next(line for line in done.stdout.splitlines() if "mlflow ui" in line)

    assert '--host "127.0.0.1"' in dry_run()
    assert '--host "0.0.0.0"' in dry_run("HOST=0.0.0.0")  # only when asked


def test_a_local_ray_starts_no_dashboard(monkeypatch: pytest.MonkeyPatch) -> None:
    """A local Ray would otherwise serve its dashboard over HTTP; the sweep starts it without one. Joining a
    cluster (RAY_ADDRESS) leaves the cluster's own settings alone."""
    import ray

    from sweeps import runtime

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("SWEEPBOARD_FAULT", raising=False)
    runtime.ray_init(None)  # type: ignore[arg-type]
    assert calls[-1]["include_dashboard"] is False
    assert calls[-1]["address"] == "local"  # never joins a `ray start` cluster it was not pointed at
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    runtime.ray_init(None)  # type: ignore[arg-type]
    assert calls[-1] == {"address": "ray://head:10001", "log_to_driver": False, "runtime_env": None}
