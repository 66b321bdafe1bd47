"""The training lifecycle of methods with a warm-up (sparse dimension tuning): training loops call
``after_optimizer_step`` after every optimizer step; ``end_warmup`` ends every warm-up at once. Also which
parameters are transient (trained only during a warm-up: not counted, not saved)."""

from __future__ import annotations

from torch import nn

from .hosts import hosts


def after_optimizer_step(model: nn.Module, last: bool = False) -> None:
    """Tell every method of ``model`` that an optimizer step was taken (``last``: the run's final one). A custom
    training loop calls this after each ``optimizer.step()``, or a method with a warm-up stays in it."""
    for host in hosts(model):
        for m in host.peft.values():
            m.after_optimizer_step(last)


def end_warmup(model: nn.Module) -> None:
    """End every method's warm-up now (sparse dimension tuning then makes its selection)."""
    for host in hosts(model):
        for m in host.peft.values():
            m.end_warmup()


def in_warmup(model: nn.Module) -> dict[str, int]:
    """Method -> optimizer steps left in its warm-up, for the methods still in one."""
    left: dict[str, int] = {}
    for host in hosts(model):
        for m in host.peft.values():
            if n := m.warmup_left():
                left[m.method] = max(left.get(m.method, 0), n)
    return left


def transient_names(model: nn.Module) -> set[str]:
    """Full names of the parameters that methods train only during a warm-up."""
    out: set[str] = set()
    for prefix, module in model.named_modules():
        for local in getattr(module, "transient", ()):
            sub = getattr(module, local, None)
            if isinstance(sub, nn.Module):
                out.update(f"{prefix}.{local}.{n}" for n, _ in sub.named_parameters())
            elif isinstance(sub, nn.Parameter):
                out.add(f"{prefix}.{local}")
    return out
