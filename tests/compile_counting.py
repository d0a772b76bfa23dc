"""A torch.compile backend that counts the graphs dynamo hands it (compile tests share it)."""

from __future__ import annotations


class CountingBackend:
    """Counts the graphs it is given and runs each one as traced (no inductor: cheap)."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward
