"""One fine-tuning trial: data -> model (none|lora|qlora|full) -> train -> evaluate -> metrics. Never imports ray."""

from trainers.config import TrialConfig
from trainers.trial import run_trial

__all__ = ["TrialConfig", "run_trial"]
