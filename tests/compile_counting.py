"""A torch.compile backend that counts the graphs dynamo hands it (compile tests share it)."""

from __future__ import annotations


class CountingBackend:
    """Counts the graphs it is given and runs each one as traced (no inductor: cheap)."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def engine_graphs(opt) -> list:
    """The ATen graphs every param group's flat compiled step made (``adapters.traced``),
    after checking that none fell back to ``torch.compile``: those steps do not go through
    dynamo, so its counters do not see them."""
    from adapters.traced import TracedStep
    graphs = []
    for rt in opt._groups:
        traced = getattr(rt.engine, "compiled", None)
        if isinstance(traced, TracedStep):
            assert traced.fallback is None, "the step could not be traced: it fell back to torch.compile"
            graphs += traced.graphs
    return graphs


def graph_ops(gm) -> int:
    """Operations in a traced graph (its ``call_function`` nodes)."""
    return sum(node.op == "call_function" for node in gm.graph.nodes)
