"""The layout of optimizers that keep ``step`` in each param group (timm's Lamb and Adan,
apex's fused optimizers): the functional state counts per param, the state_dict holds
one ``step`` per group that has stepped."""

from __future__ import annotations

from typing import Any, Optional

import torch

from .torch_optim import _TorchCompatible


def bump_count(state: Any, cls: type) -> None:
    """Add 1 in place to the ``count`` of every ``cls`` state in ``state`` (a group that
    steps without gradients still counts the step, as these libraries do)."""
    if isinstance(state, cls):
        state.count.add_(1)
    elif isinstance(state, (tuple, list)):
        for child in state:
            bump_count(child, cls)
    elif isinstance(state, dict):
        for child in state.values():
            bump_count(child, cls)


class GroupStepped(_TorchCompatible):
    """A drop-in whose library keeps ``step`` in the param group.

    Subclasses name the state class whose ``count`` is the group's step (``_state_cls``)
    and its leaf (``_count_key``, e.g. ``"ScaleByAdanState.count"``), and may convert it
    for export (``_export_step``: a Python int by default) or divide every group's
    gradients by one number computed over all groups (``_clip_divisor``: Lamb's and
    FusedLAMB's global-norm clipping). ``load_state_dict`` moves each saved group's
    ``step`` into its params' entries (as ``"step"``), where ``_import_entry`` reads it.
    """

    _state_cls: type
    _count_key: str

    def _clip_divisor(self) -> Optional[torch.Tensor]:
        return None

    @torch.no_grad()
    def step(self, closure=None):
        """One step of every group; a group without gradients still counts it."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        extra: dict[str, Any] = {} if loss is None else {"value": loss}
        divisor = self._clip_divisor()
        if divisor is not None:
            extra["clip_divisor"] = divisor
        for group, rt in zip(self.param_groups, self._groups):
            if all(p.grad is None for p in group["params"]):
                rt.rebuild_if_needed(group)
                bump_count(rt.state, self._state_cls)
                continue
            rt.step(group, extra)
        return loss

    def _export_step(self, count: Any) -> Any:
        return int(count)

    def _group_steps(self) -> list[Any]:
        steps = []
        for group, rt in zip(self.param_groups, self._groups):
            entries = rt.entries(group["params"])
            count = next((e[self._count_key] for e in entries if self._count_key in e), None)
            steps.append(None if count is None or int(count) == 0 else self._export_step(count))
        return steps

    def state_dict(self) -> dict[str, Any]:
        """The library's format: per-param state, ``step`` in each group that has stepped."""
        out = super().state_dict()
        for packed, step in zip(out["param_groups"], self._group_steps()):
            if step is not None:
                packed["step"] = step
        return out

    def _split_group(self, saved: dict[str, Any], state: dict[Any, Any], current: dict[str, Any] | None) -> None:
        """Move the group's ``step`` of ``saved`` into its params' entries of ``state``
        (``current``: this optimizer's group it loads into, None past the last)."""
        step = saved.pop("step", None)
        if step is not None:
            for idx in saved["params"]:
                key = str(idx) if idx not in state and str(idx) in state else idx
                state[key] = {**state.get(key, {}), "step": step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict of the library's class (or of this one): each group's ``step``
        becomes the functional state's count."""
        state = dict(state_dict["state"])
        groups = []
        for i, saved in enumerate(state_dict["param_groups"]):
            saved = dict(saved)
            self._split_group(saved, state, self.param_groups[i] if i < len(self.param_groups) else None)
            groups.append(saved)
        super().load_state_dict({**state_dict, "state": state, "param_groups": groups})
