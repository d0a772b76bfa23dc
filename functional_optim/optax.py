"""optax's aliases by optax's names, arguments and defaults, where the top-level name is
another library's (DESIGN: top-level ``fo.<name>`` is torch's, else timm's or MONAI's,
else optax's).

``fo.optax.lamb`` and ``fo.optax.lars`` are optax's compositions (trust ratio of Adam's
direction plus decay; LARS as momentum of the trust-scaled update); ``fo.lamb`` and
``fo.lars`` are timm's ``Lamb`` and ``Lars`` (global-norm clipping, LARC, ...). optax
itself is never imported.

Example:
  >>> import torch, functional_optim as fo
  >>> opt = fo.optax.lamb(lr=0.1)
  >>> params = {"w": torch.ones(2)}
  >>> updates, _ = opt.update({"w": torch.ones(2)}, opt.init(params), params)
  >>> updates["w"]  # -lr * (||p|| / ||r||) * r with r = Adam's first step (+-1)
  tensor([-0.1000, -0.1000])
"""

from __future__ import annotations

from .aliases.layerwise import lamb, lars

__all__ = ["lamb", "lars"]
