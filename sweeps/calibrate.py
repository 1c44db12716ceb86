"""Each finished trial teaches the planner: its measured seconds per phase over what the built-in rates plan
for that same trial (its method, rank and targets, on the resources it had) go into the calibration file
(tracking/calibration.py), which the next `sweepboard plan` and the next sweep's admission read."""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from tracking import calibration


class Calibrate(Callback):
    def __init__(self, cfg: Any, sweep_id: str) -> None:
        self.cfg = cfg  # the sweep config: its trial settings and resources are what each trial is planned on
        self.sweep_id = sweep_id
        self._ctx: Any = None  # the plan's context (model shape, data size), built at the first finished trial
        self._warned = False

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:  # fmt: skip
        if result.get("phase") != "final":
            return
        try:
            entry = self.entry(trial.trial_id, trial.config, result)
        except Exception as exc:  # noqa: BLE001  the calibration must never cost a sweep its run
            if not self._warned:
                print(f"sweepboard: note: the planner's calibration was not updated ({type(exc).__name__}: {exc})",
                      flush=True)  # fmt: skip
                self._warned = True
            return
        if entry is not None:
            calibration.append(entry)

    def entry(self, trial_id: str, config: dict[str, Any], result: dict[str, Any]) -> dict[str, Any] | None:
        from sweeps import plan_cli
        from sweeps.trainable import SEARCHED, trial_config

        if self._ctx is None:
            self._ctx = plan_cli.context(plan_cli.sweep_args(self.cfg), self.cfg)
        settings = trial_config(config, config["sweepboard_trial"])
        planned = plan_cli.plan_trial(self._ctx, {k: settings[k] for k in SEARCHED if k in settings}, calibrated=False)
        factors = calibration.measured(planned["seconds"], result)
        if not factors:
            return None
        device = calibration.device_id(str(result["device"]), str(result.get("device_name", "")),
                                       str(result["precision"]))  # fmt: skip
        return {"device": device, "method": result["method"], "factors": factors, "sweep_id": self.sweep_id,
                "trial_id": trial_id, "model": self._ctx.shape.source,
                "planned_seconds": planned["seconds"], "wall_seconds": result["wall_seconds"]}  # fmt: skip

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ctx": None, "_warned": False}
