"""Gradient centralization: updates with their per-unit mean removed."""

from __future__ import annotations

from .. import kernels as k
from ..base import GradientTransformation, Needs, declare, init_empty_state
from ..tree import select


def centralize() -> GradientTransformation:
    """Subtract from each update of two or more dimensions its mean over every dimension
    but the first; updates of zero or one dimension pass unchanged.

    ``u = u - mean(u, dims=(1, ..., ndim-1), keepdim=True)`` (optax's rule, applied to the
    tensor as stored). In torch's layout (``Linear``: ``(out, in)``; ``ConvNd``:
    ``(out, in, *kernel)``) the first dimension is the output unit, so each output unit's
    weight gradient is centred, as in the gradient-centralization paper's PyTorch code
    (Yong et al., 2020).

    Example:
      >>> import torch, functional_optim as fo
      >>> from functional_optim.transforms.centering import centralize
      >>> tx = centralize()
      >>> tx.update(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 9.0]]), tx.init(None))[0]
      tensor([[-1.,  0.,  1.],
              [-2., -1.,  3.]])
    """


    def update_fn(updates, state, params=None, *, donate=False, **extra):
        del params, extra
        sel = select(updates)
        chosen = [i for i, u in enumerate(sel.updates) if u.dim() > 1]
        picked = [sel.updates[i] for i in chosen]
        means = k.means(picked, [tuple(range(1, u.dim())) for u in picked])
        centred = k.sub(picked, means, donate=donate)
        new = list(sel.updates)
        for i, u in zip(chosen, centred):
            new[i] = u
        return sel.rebuild(new), state

    return declare(GradientTransformation(init_empty_state, update_fn), Needs.MATRIX)
