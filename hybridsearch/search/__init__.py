"""The search: spaces (``space``; designs in ``space.design``), the study layer both engines share (``study``), how
a study starts (``startup``) and ends (``final``), the trial objective, the local (``optuna_engine``) and Ray
(``ray_engine``) engines, stages and phases (``run``), the public ``run_search`` / ``resume_search`` (``api``),
reading results back (``results``, ``report``), and searching a recorded table instead of training
(``simulate``)."""

from .api import resume_search, run_search
from .run import ENGINES, run_options
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
           "check_budget", "count_methods", "describe", "load_space", "resume_search", "run_options", "run_search",
           "space_from_dict",
           "validate_space"]
