"""A compiled step made without dynamo: traced once to an ATen graph, compiled by inductor.

A step function's Python (the transform, the kernel layer, pytree plumbing) is fixed for
a given engine: the same tensors in the same structure every step, no graph breaks
allowed. ``torch.compile`` would trace it bytecode by bytecode through dynamo (1.3-1.8 s
of a 3-4 s cold compile on ResNet-50's 161 params, measured) and check guards on every
call (~0.15 ms). Here ``make_fx`` runs that Python once on fake tensors (~0.1 s) and
``torch._inductor.compile`` compiles the ATen graph; each call only flattens the
arguments and checks their structure and tensor metadata.

Tensors the function reads without receiving them (the adapter's hyperparameter tensors
held by the transform, any tensor a user's transform captures) become graph inputs read
at every call, never constants: changing them in place is seen at the next step, as with
``torch.compile``. If tracing fails (an op ``make_fx`` cannot trace, a tensor subclass),
the step falls back to ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable
from typing import Any

import optree
import torch

# graphs one step makes at most; the next new argument structure hands every call to torch.compile
MAX_GRAPHS = 8


def _tracing_context():
    """``torch.compiler.is_compiling()`` is True while tracing (code paths for traced
    steps: no host reads, no eager-only shortcuts)."""
    session = getattr(torch.compiler, "_compile_session_context", None)
    return session() if session is not None else contextlib.nullcontext()


@contextlib.contextmanager
def _compile_context():
    """A tracing context with a fake mode that has a shape environment, as dynamo gives
    inductor (without one, inductor's FX graph cache is bypassed and every process compiles
    again); yields the fake mode, in which the example inputs are made with static shapes."""
    from torch._guards import TracingContext, tracing
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv
    fake_mode = FakeTensorMode(shape_env=ShapeEnv(), static_shapes=True)
    with tracing(TracingContext(fake_mode)):
        yield fake_mode


def _plain(leaf: Any) -> bool:
    return type(leaf) in (torch.Tensor, torch.nn.Parameter) and leaf.layout == torch.strided


def _meta(leaf: Any) -> Any:
    if isinstance(leaf, torch.Tensor):
        return (tuple(leaf.shape), leaf.stride(), leaf.storage_offset(), leaf.dtype, leaf.device,
                leaf.requires_grad)
    return leaf


class TracedStep:
    """``fn(*args)`` (returning None, writing its results in place) as compiled graphs.

    Args:
      fn: the step; its arguments are pytrees (optree) of tensors and hashable constants.
      options: inductor options for the graphs (``torch._inductor.compile``'s ``options``).

    Attributes:
      graphs: the ATen graphs made so far (one per argument structure), for inspection.
      fallback: the ``torch.compile``d step once tracing has failed, else None.

    Example:
      >>> import torch
      >>> from adapters.traced import TracedStep
      >>> def step(xs, lr):
      ...     for x in xs:
      ...         x.mul_(1 - lr)
      >>> lr, xs = torch.tensor(0.5), [torch.ones(3)]
      >>> compiled = TracedStep(step)
      >>> compiled(xs, lr); _ = lr.fill_(0.25); compiled(xs, lr)
      >>> xs[0], len(compiled.graphs)
      (tensor([0.3750, 0.3750, 0.3750]), 1)
    """

    def __init__(self, fn: Callable[..., None], options: dict[str, Any] | None = None):
        self.fn, self.options = fn, options
        self.graphs: list[torch.fx.GraphModule] = []
        self.fallback: Callable[..., None] | None = None
        self._compiled: dict[Any, tuple[Callable, list[torch.Tensor]]] = {}

    def __call__(self, *args: Any) -> None:
        if self.fallback is not None:
            self.fallback(*args)
            return
        leaves, spec = optree.tree_flatten(args, none_is_leaf=True)
        try:
            key = (spec, tuple(_meta(leaf) for leaf in leaves))
            hash(key)
        except TypeError:  # an unhashable constant: no key to tell calls apart
            key = None
        entry = self._compiled.get(key) if key is not None else None
        if entry is None:
            entry = self._compile(leaves, spec) if key is not None else None
            if entry is None:
                self.fallback = self._torch_compile()
                self.fallback(*args)
                return
            self._compiled[key] = entry
        compiled, captured = entry
        compiled(*captured, *[leaf for leaf in leaves if isinstance(leaf, torch.Tensor)])

    def _compile(self, leaves: list, spec: Any) -> tuple[Callable, list] | None:
        """Trace and compile for these arguments' structure; None if it cannot be traced."""
        if len(self._compiled) >= MAX_GRAPHS or not all(
                _plain(leaf) for leaf in leaves if isinstance(leaf, torch.Tensor)):
            return None
        positions = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
        constants = list(leaves)

        def flat_fn(*tensors: torch.Tensor) -> None:
            values = list(constants)
            for i, t in zip(positions, tensors):
                values[i] = t
            self.fn(*optree.tree_unflatten(spec, values))

        from torch.fx.experimental.proxy_tensor import make_fx
        tensors = [leaves[i] for i in positions]
        try:
            with _tracing_context():
                gm = make_fx(flat_fn, tracing_mode="fake", _allow_non_fake_inputs=True)(*tensors)
        except Exception:  # noqa: BLE001 -- whatever make_fx cannot trace, dynamo may
            return None
        captured = _lift_constants(gm)
        with _compile_context() as fake_mode:
            inputs = [fake_mode.from_tensor(t, static_shapes=True) for t in (*captured, *tensors)]
            compiled = torch._inductor.compile(gm, inputs, options=self.options)
        self.graphs.append(gm)
        return compiled, captured

    def _torch_compile(self) -> Callable[..., None]:
        return torch_compiled(self.fn, self.options)


def torch_compiled(fn: Callable[..., None], options: dict[str, Any] | None = None) -> Callable[..., None]:
    """``torch.compile(fn, fullgraph=True, dynamic=False)`` with a private dynamo cache.

    Dynamo caches compiled code per code object (8 entries by default); a private copy of
    ``fn``'s code gives every step its own cache, so many groups or optimizers coexist.
    """
    code = fn.__code__.replace() if isinstance(fn, types.FunctionType) else None
    own = fn if code is None else types.FunctionType(code, fn.__globals__, fn.__name__,
                                                     fn.__defaults__, fn.__closure__)
    return torch.compile(own, fullgraph=True, dynamic=False, options=options)


def _lift_constants(gm: torch.fx.GraphModule) -> list[torch.Tensor]:
    """Turn every tensor the traced function captured (``get_attr`` nodes: ``make_fx``
    stores an alias of the captured tensor, sharing its storage) into a leading graph
    input; returns those aliases, passed at every call so in-place changes are read."""
    graph = gm.graph
    first = next(iter(graph.nodes))
    captured: list[torch.Tensor] = []
    inputs: dict[str, torch.fx.Node] = {}
    for node in list(graph.nodes):
        if node.op != "get_attr":
            continue
        if node.target not in inputs:
            captured.append(getattr(gm, node.target))
            with graph.inserting_before(first):
                inputs[node.target] = graph.placeholder(f"captured_{len(captured)}")
            inputs[node.target].meta = dict(node.meta)
        node.replace_all_uses_with(inputs[node.target])
        graph.erase_node(node)
    for target in inputs:
        delattr(gm, target)
    # placeholders in the order they were inserted, all before the original inputs
    gm.recompile()
    return captured
