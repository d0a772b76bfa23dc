"""The functional side of ``monai.optimizers``, with MONAI's names, arguments and defaults.

``fo.monai.novograd`` is ``monai.optimizers.Novograd`` as a transform; the schedules are
the math of MONAI's ``WarmupCosineSchedule`` and of its LR-finder ``LinearLR`` and
``ExponentialLR``. The ``torch.optim`` classes (``Novograd``, ``generate_param_groups``,
the schedulers, ``LearningRateFinder``) are in ``adapters.monai``. MONAI itself is never
imported.

Example:
  >>> import torch, functional_optim as fo
  >>> opt = fo.monai.novograd(lr=0.1, betas=(0.9, 0.98), grad_averaging=True)
  >>> params = {"w": torch.zeros(2)}
  >>> updates, _ = opt.update({"w": torch.tensor([3.0, 4.0])}, opt.init(params), params)
  >>> updates["w"]  # -lr * (1 - beta1) * g / ||g||
  tensor([-0.0060, -0.0080])
"""

from __future__ import annotations

from .aliases.novograd import novograd
from .schedules import exponential_range_schedule, linear_range_schedule, warmup_cosine_schedule
from .transforms.novograd import ScaleByNovogradState, scale_by_novograd

__all__ = ["novograd", "scale_by_novograd", "ScaleByNovogradState", "warmup_cosine_schedule",
           "linear_range_schedule", "exponential_range_schedule"]
