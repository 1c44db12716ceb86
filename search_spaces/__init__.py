"""Search spaces as YAML data, one loader that checks them, and their Optuna/Tune forms.

    space = load_space("search_spaces/default.yaml")   # or load_space("default")
    OptunaSearch(space.define_by_run, points_to_evaluate=space.points_to_evaluate(), metric=..., mode=...)

No torch here (leaderboard and search_spaces stay light: they never import torch); Optuna is only touched through the trial passed in.
"""

from search_spaces.loader import SearchSpaceError, builtin_spaces, load_space, parse_space
from search_spaces.params import Categorical, Fixed, FloatRange, IntRange, ParamSpec
from search_spaces.space import CONFIG_KEYS, METHODS, MethodSpace, SearchSpace, drop_search_params, param_name
from search_spaces.targets import PRESETS, TargetModulesError, resolve_targets

__all__ = [
    "CONFIG_KEYS",
    "METHODS",
    "PRESETS",
    "Categorical",
    "Fixed",
    "FloatRange",
    "IntRange",
    "MethodSpace",
    "ParamSpec",
    "SearchSpace",
    "SearchSpaceError",
    "TargetModulesError",
    "builtin_spaces",
    "drop_search_params",
    "load_space",
    "param_name",
    "parse_space",
    "resolve_targets",
]
