"""Reading a space's ``methods`` section: each method's switch, searched parameters, stage-1 settings and
per-layer rank groups. A value is checked by building the method's real PEFT config with it, so a space accepts
exactly what ``apply_peft`` accepts and its messages name the space's key path."""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any

from ...errors import ConfigError
from ...peft import METHODS, PeftConfig, parse_layers
from .checks import MISSING, Check, Errors, as_number, c_bool, get, join, mapping, show
from .params import Param, parse_param
from .schema import LayerGroup, MethodSpace


def _method_field_check(name: str, f: str, default: Any) -> Check:
    """Validates one value of field ``f`` by building the PEFT config of ``name`` with it."""

    def check(v: Any) -> tuple[Any, str | None]:
        if isinstance(default, float) and isinstance(v, str) and as_number(v) is not None:
            v = float(v)  # PyYAML reads 1e-3 as a string
        if f == "layers" and (isinstance(v, bool) or v is None):
            return v, f"{v!r} is not a layer spec; allowed: all, an int, 'a-b' or a list of those"
        if (f == "layers" or (f == "rank" and isinstance(v, dict))) and (msg := _huge_range(v)):
            return v, msg
        try:
            PeftConfig.from_dict({"methods": {name: {f: copy.deepcopy(v)}}}, source="@")
        except ConfigError as e:
            return v, str(e).split(": ", 2)[-1]
        except (TypeError, ValueError, AttributeError) as e:
            return v, f"invalid value {v!r} ({type(e).__name__}: {e})"
        return v, None

    return check


_RANGE_RE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")
_MAX_LAYERS = 10_000


def _huge_range(v: Any) -> str | None:
    """Layer ranges beyond any model are refused before the PEFT checks expand them into index sets."""
    items = list(v) if isinstance(v, dict) else v if isinstance(v, list) else [v]
    for item in items:
        m = _RANGE_RE.fullmatch(item) if isinstance(item, str) else None
        big = (m and int(m.group(2)) >= _MAX_LAYERS) or (isinstance(item, int) and item >= _MAX_LAYERS)
        if big:
            return f"layer {item!r} is beyond any model (< {_MAX_LAYERS:,} layers)"
    return None


def _group_rank_check(v: Any) -> tuple[Any, str | None]:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        return v, f"a group rank must be an integer >= 0 (0 leaves the group out), got {show(v)}"
    return v, None


def parse_methods(raw: Any, errs: Errors) -> dict[str, MethodSpace]:
    if isinstance(raw, list):  # shorthand: a list of names, each optional with PEFT defaults
        if not all(isinstance(n, str) for n in raw):
            errs.add("methods", "a list of methods must hold method names only")
            return {}
        raw = dict.fromkeys(raw)
    if not isinstance(raw, dict) or not raw:
        if raw is not None:
            errs.add("methods", f"expected a non-empty mapping of method name -> settings, got {show(raw)}")
        return {}
    out = {}
    for name in raw:
        if name not in METHODS:
            errs.add(join("methods", name), f"unknown method; allowed: {', '.join(METHODS.names())}")
            continue
        ms = _parse_method(name, raw[name], errs)
        if ms is not None:
            out[name] = ms
    return {n: out[n] for n in METHODS.names() if n in out}  # canonical order


def _parse_method(name: str, raw: Any, errs: Errors) -> MethodSpace | None:
    path = f"methods.{name}"
    spec = METHODS.get(name)
    defaults = {f.name: f.default for f in dataclasses.fields(spec.config)}
    d = mapping(raw, path, errs, ("optional", "params", "stage1", "layer_groups"))
    optional = get(d, "optional", path, errs, c_bool(), True)
    pmap = mapping(d.get("params"), f"{path}.params", errs, defaults)
    params = {}
    for f, v in pmap.items():
        p = parse_param(v, f"{path}.params.{f}", errs, _method_field_check(name, f, defaults[f]))
        if p is not None:
            params[f] = p
    if "layers" in pmap and not spec.per_layer:
        errs.add(f"{path}.params.layers", f"{name} is not per layer; remove 'layers'")
    stage1 = _parse_stage1(name, d.get("stage1"), params, defaults, errs)
    groups = _parse_groups(name, d.get("layer_groups"), pmap, spec, errs) if "layer_groups" in d else ()
    return MethodSpace(name, optional, params, groups, stage1)


def _parse_stage1(name: str, raw: Any, params: dict[str, Param], defaults: dict, errs: Errors) -> dict:
    path = f"methods.{name}.stage1"
    n0 = len(errs.items)
    d = mapping(raw, path, errs, defaults)
    out = {}
    for f, v in d.items():
        v, msg = _method_field_check(name, f, defaults[f])(v)
        if msg:
            errs.add(join(path, f), msg)
        out[f] = v
    settings = {**{f: p.resolved for f, p in params.items() if p.resolved is not MISSING}, **out}
    try:  # the stage-1 settings together
        PeftConfig.from_dict({"methods": {name: settings}}, source="@")
    except ConfigError as e:
        if len(errs.items) == n0:  # report the combination only when no single value was wrong
            errs.add(path, str(e).split(": ", 2)[-1])
    return out


def _parse_groups(name: str, raw: Any, pmap: dict, spec: Any, errs: Errors) -> tuple[LayerGroup, ...]:
    path = f"methods.{name}.layer_groups"
    if "rank" not in {f.name for f in dataclasses.fields(spec.config)} or not spec.per_layer:
        errs.add(path, f"{name} has no per-layer rank; layer groups apply to the per-layer LoRA family "
                       f"({', '.join(n for n, s in METHODS.items() if s.per_layer and hasattr(s.config, 'rank'))})")
        return ()
    for f in ("rank", "layers"):
        if f in pmap:
            errs.add(f"methods.{name}.params.{f}", "set per group in layer_groups; remove it from params")
    if not isinstance(raw, list) or not raw:
        errs.add(path, f"expected a non-empty list of {{layers, rank | tie}}, got {show(raw)}")
        return ()
    groups: list[LayerGroup] = []
    seen: set[int] = set()
    for i, g in enumerate(raw):
        gp = join(path, i)
        gd = mapping(g, gp, errs, ("layers", "rank", "tie"), required=("layers",))
        layers = gd.get("layers")
        if "layers" in gd:
            _group_layers(layers, gp, seen, errs)
        rank, tie = None, None
        if ("rank" in gd) == ("tie" in gd):
            errs.add(gp, "give exactly one of rank (its own) or tie (the index of an earlier group)")
        elif "rank" in gd:
            rank = parse_param(gd["rank"], join(gp, "rank"), errs, _group_rank_check)
        else:
            tie = gd["tie"]
            if isinstance(tie, bool) or not isinstance(tie, int) or not 0 <= tie < i or groups[tie].tie is not None:
                allowed = [j for j in range(i) if groups[j].tie is None]
                errs.add(join(gp, "tie"), f"must be the index of an earlier untied group; allowed: {allowed}")
                tie = None
        groups.append(LayerGroup(layers, rank, tie))
    return tuple(groups)


def _group_layers(layers: Any, path: str, seen: set[int], errs: Errors) -> None:
    if layers == "all" or isinstance(layers, bool) or layers is None:
        errs.add(join(path, "layers"), f"a group needs explicit layers ('a-b', an int or a list), got {layers!r}")
        return
    if msg := _huge_range(layers):
        errs.add(join(path, "layers"), msg)
        return
    try:
        idx = set(parse_layers(layers, 10**9, "@"))
    except ConfigError as e:
        errs.add(join(path, "layers"), str(e).split(": ", 1)[-1])
        return
    overlap = sorted(idx & seen)
    if overlap:
        errs.add(join(path, "layers"), f"layers {overlap[:8]} are already in an earlier group")
    seen.update(idx)
