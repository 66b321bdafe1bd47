"""The search: spaces (``space``), the study layer both engines share (``study``), the trial objective, the local
(``optuna_engine``) and Ray (``ray_engine``) engines, ``run_search`` with stages, and reading results back."""

from .run import ENGINES, run_search
from .space import (
    CategoricalParam,
    FixedParam,
    FloatParam,
    IntParam,
    MethodSpace,
    Param,
    SampledConfig,
    SearchSpace,
    SpaceError,
    SpaceReport,
    bundled_spaces,
    check_budget,
    count_methods,
    describe,
    load_space,
    space_from_dict,
    validate_space,
)
from .study import RunOptions

__all__ = ["ENGINES", "CategoricalParam", "FixedParam", "FloatParam", "IntParam", "MethodSpace", "Param",
           "RunOptions", "SampledConfig", "SearchSpace", "SpaceError", "SpaceReport", "bundled_spaces",
           "check_budget", "count_methods", "describe", "load_space", "run_search", "space_from_dict",
           "validate_space"]
