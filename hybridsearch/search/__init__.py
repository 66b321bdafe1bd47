"""The search: spaces (``space``), the Optuna study engine, trial objective, storage and results."""

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

__all__ = ["CategoricalParam", "FixedParam", "FloatParam", "IntParam", "MethodSpace", "Param", "SampledConfig",
           "SearchSpace", "SpaceError", "SpaceReport", "bundled_spaces", "check_budget", "count_methods",
           "describe", "load_space", "space_from_dict", "validate_space"]
