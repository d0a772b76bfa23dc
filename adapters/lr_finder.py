"""``LearningRateFinder``: MONAI's learning-rate range test, for any torch optimizer."""

from __future__ import annotations

import contextlib
import os
import pickle
import types
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch.serialization import DEFAULT_PROTOCOL

from ._lr_finder_utils import (StateCache, cycle_batches, default_image_extractor, default_label_extractor,
                               progress, to_device)
from .schedulers import ExponentialLR, LinearLR

__all__ = ["LearningRateFinder"]


class LearningRateFinder:
    """The learning-rate range test (Smith, 2015), with MONAI's API, for any torch optimizer.

    The learning rate grows from the optimizer's lr (or ``start_lr``) to ``end_lr`` over
    ``num_iter`` training steps (exponentially or linearly, MONAI's ``ExponentialLR``/``LinearLR``,
    i.e. ``fo.exponential_range_schedule``/``fo.linear_range_schedule``), recording the
    (smoothed) loss at each lr; the test stops early when the loss exceeds
    ``diverge_th * best_loss``. Model and optimizer state are cached at construction and
    restored by :meth:`reset` (automatically after the test with ``auto_reset``).
    Works with ``torch.optim`` optimizers and ``adapters.FunctionalOptimizer`` alike.

    Args:
      model: the wrapped model.
      optimizer: the wrapped optimizer (must have no LR scheduler attached).
      criterion: the loss function ``criterion(outputs, labels)``.
      device: where to run the test (default None: the device of the model's first param).
      memory_cache: cache the state dicts in memory (default True); else in files.
      cache_dir: directory for those files (default None: the system temp directory).
      amp: run forward passes under ``torch.autocast`` (bf16 on CPU, fp16 with a
        ``GradScaler`` on CUDA) (default False).
      pickle_module, pickle_protocol: passed to ``torch.save``/``torch.load`` for the file cache.
      verbose: show a tqdm progress bar (when tqdm is installed) and messages (default True).

    Example:
      >>> import torch
      >>> from adapters import LearningRateFinder
      >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
      <...>
      >>> x = torch.randn(64, 3); y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
      >>> loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
      >>> model = torch.nn.Linear(3, 1)
      >>> opt = torch.optim.SGD(model.parameters(), lr=1e-4)
      >>> finder = LearningRateFinder(model, opt, torch.nn.MSELoss(), verbose=False)
      >>> finder.range_test(loader, end_lr=10.0, num_iter=50)
      >>> lr, loss = finder.get_steepest_gradient()
      >>> 1e-4 < lr < 10.0
      True
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, criterion: Callable,
                 device: str | torch.device | None = None, memory_cache: bool = True,
                 cache_dir: str | None = None, amp: bool = False, pickle_module: types.ModuleType = pickle,
                 pickle_protocol: int = DEFAULT_PROTOCOL, verbose: bool = True) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if not callable(criterion):
            raise TypeError(f"criterion must be callable, got {type(criterion).__name__}")
        self.optimizer = optimizer
        self._check_for_scheduler()
        self.model, self.criterion = model, criterion
        self.history: dict[str, list] = {"lr": [], "loss": []}
        self.memory_cache, self.cache_dir, self.amp, self.verbose = memory_cache, cache_dir, amp, verbose
        first = next(iter(model.parameters()), None)
        if first is None:
            raise ValueError("model has no parameters")
        self.model_device = first.device
        self._model_training = model.training
        self.state_cacher = StateCache(memory_cache, cache_dir, pickle_module, pickle_protocol)
        self.state_cacher.store("model", model.state_dict())
        self.state_cacher.store("optimizer", optimizer.state_dict())
        self.device = device if device else self.model_device

    def reset(self) -> None:
        """Restore the model (weights, buffers, train/eval mode) and optimizer to their state at construction."""
        self.model.load_state_dict(self.state_cacher.retrieve("model"))
        self.optimizer.load_state_dict(self.state_cacher.retrieve("optimizer"))
        self.model.to(self.model_device)
        self.model.train(self._model_training)

    def _check_for_scheduler(self) -> None:
        for group in self.optimizer.param_groups:
            if "initial_lr" in group:
                raise RuntimeError("Optimizer already has a scheduler attached to it")

    def _set_learning_rate(self, new_lrs: float | list) -> None:
        groups = self.optimizer.param_groups
        if not isinstance(new_lrs, list):
            new_lrs = [new_lrs] * len(groups)
        if len(new_lrs) != len(groups):
            raise ValueError("start_lr: length of the list is not equal to the number of parameter groups "
                             f"in the given optimizer ({len(new_lrs)} vs {len(groups)})")
        for group, lr in zip(groups, new_lrs):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(float(lr))
            else:
                group["lr"] = lr

    def range_test(self, train_loader: Iterable, val_loader: Iterable | None = None,
                   image_extractor: Callable = default_image_extractor,
                   label_extractor: Callable = default_label_extractor, start_lr: float | list | None = None,
                   end_lr: float = 10.0, num_iter: int = 100, step_mode: str = "exp", smooth_f: float = 0.05,
                   diverge_th: int = 5, accumulation_steps: int = 1, non_blocking_transfer: bool = True,
                   auto_reset: bool = True) -> None:
        """Run the range test; the results are in ``self.history`` (``'lr'`` and ``'loss'`` lists).

        Args:
          train_loader: training batches (a DataLoader or any re-iterable; restarted when exhausted).
          val_loader: if given, the loss at each step is the mean loss over this loader
            (Leslie Smith's approach) instead of the training batch's loss.
          image_extractor, label_extractor: get the inputs and labels from a batch
            (defaults: ``x["image"]``/``x["label"]`` for dicts, else ``x[0]``/``x[1]``).
          start_lr: the first lr (a number, or a list with one per group); default None:
            the optimizer's lr.
          end_lr: the lr at the last iteration (default 10.0).
          num_iter: the number of iterations (> 1, default 100).
          step_mode: ``"exp"`` (default) or ``"linear"`` growth of the lr.
          smooth_f: loss smoothing factor in [0, 1): ``loss = f * loss + (1 - f) * previous``
            (default 0.05; 0 disables).
          diverge_th: stop when the loss exceeds ``diverge_th * best_loss`` (default 5).
          accumulation_steps: batches per step, gradients accumulated (default 1).
          non_blocking_transfer: move batches with ``non_blocking=True`` (default True).
          auto_reset: restore model and optimizer afterwards (default True; also on error).
        """
        if isinstance(num_iter, bool) or not isinstance(num_iter, int) or num_iter <= 1:
            raise ValueError(f"`num_iter` must be an int larger than 1, got {num_iter!r}")
        if not isinstance(step_mode, str) or step_mode.lower() not in ("exp", "linear"):
            raise ValueError(f"step_mode: expected one of (exp, linear), got {step_mode!r}")
        if not 0 <= smooth_f < 1:
            raise ValueError(f"smooth_f is outside the range [0, 1[: {smooth_f}")
        if isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be an int >= 1, got {accumulation_steps!r}")
        self.history = {"lr": [], "loss": []}
        self._check_for_scheduler()
        if start_lr:
            self._set_learning_rate(start_lr)
        self.model.to(self.device)
        opt_attrs = {k: self.optimizer.__dict__[k] for k in ("step", "_opt_called") if k in self.optimizer.__dict__}
        cls = ExponentialLR if step_mode.lower() == "exp" else LinearLR
        try:
            self._run(cls(self.optimizer, end_lr, num_iter), train_loader, val_loader, image_extractor,
                      label_extractor, num_iter, smooth_f, diverge_th, accumulation_steps, non_blocking_transfer)
        finally:
            for k in ("step", "_opt_called"):  # undo the scheduler's patch of optimizer.step
                self.optimizer.__dict__.pop(k, None)
            self.optimizer.__dict__.update(opt_attrs)
            if auto_reset:
                if self.verbose:
                    print("Resetting model and optimizer")
                self.reset()

    def _run(self, scheduler, train_loader, val_loader, image_extractor, label_extractor, num_iter, smooth_f,
             diverge_th, accumulation_steps, non_blocking) -> None:
        train_iter = cycle_batches(train_loader, image_extractor, label_extractor)
        device = torch.device(self.device)
        scaler = torch.amp.GradScaler("cuda") if self.amp and device.type == "cuda" else None
        bar, tprint = progress(num_iter, self.verbose)
        best_loss = -float("inf")
        try:
            for iteration in bar:
                loss = self._train_batch(train_iter, accumulation_steps, non_blocking, scaler)
                if val_loader:
                    loss = self._validate(val_loader, image_extractor, label_extractor, non_blocking)
                lr = scheduler.get_last_lr()[0]
                self.history["lr"].append(float(lr) if isinstance(lr, torch.Tensor) else lr)
                scheduler.step()
                if iteration == 0:
                    best_loss = loss
                else:
                    if smooth_f > 0:
                        loss = smooth_f * loss + (1 - smooth_f) * self.history["loss"][-1]
                    best_loss = min(best_loss, loss)
                self.history["loss"].append(loss)
                if loss > diverge_th * best_loss:
                    if self.verbose:
                        tprint("Stopping early, the loss has diverged")
                    break
        finally:
            if hasattr(bar, "close"):
                bar.close()

    def _autocast(self) -> Any:
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type)

    def _train_batch(self, train_iter: Iterator, accumulation_steps: int, non_blocking: bool, scaler) -> float:
        self.model.train()
        total = 0.0
        self.optimizer.zero_grad()
        for _ in range(accumulation_steps):
            inputs, labels = to_device(next(train_iter), self.device, non_blocking)
            with self._autocast():
                loss = self.criterion(self.model(inputs), labels)
            loss = loss / accumulation_steps
            (scaler.scale(loss) if scaler is not None else loss).backward()
            total += loss.item()
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        return total

    def _validate(self, val_loader: Iterable, image_extractor: Callable, label_extractor: Callable,
                  non_blocking: bool) -> float:
        training = self.model.training
        running, count = 0.0, 0
        try:
            self.model.eval()
            with torch.no_grad():
                for batch in val_loader:
                    inputs, labels = to_device((image_extractor(batch), label_extractor(batch)), self.device,
                                                non_blocking)
                    with self._autocast():
                        loss = self.criterion(self.model(inputs), labels)
                    running += loss.item() * len(labels)
                    count += len(labels)
        finally:
            self.model.train(training)
        dataset = getattr(val_loader, "dataset", None)
        return running / (len(dataset) if dataset is not None else count)

    def get_lrs_and_losses(self, skip_start: int = 0, skip_end: int = 0) -> tuple[list, list]:
        """The recorded lrs and losses without ``skip_start`` first and ``skip_end`` last points.

        As in MONAI, the last recorded point (the diverging one after an early stop) is
        always left out, even with ``skip_end=0``.
        """
        if skip_start < 0:
            raise ValueError("skip_start cannot be negative")
        if skip_end < 0:
            raise ValueError("skip_end cannot be negative")
        end = len(self.history["lr"]) - skip_end - 1
        return self.history["lr"][skip_start:end], self.history["loss"][skip_start:end]

    def get_steepest_gradient(self, skip_start: int = 0, skip_end: int = 0) -> tuple[Any, Any]:
        """The ``(lr, loss)`` where the loss falls fastest: the argmin of the losses'
        gradient with respect to the iteration index (central differences inside, one-sided
        at the ends, as ``numpy.gradient``). ``(None, None)`` with fewer than 2 points."""
        lrs, losses = self.get_lrs_and_losses(skip_start, skip_end)
        if len(losses) < 2:
            print("Failed to compute the gradients, there might not be enough points.")
            return None, None
        (grad,) = torch.gradient(torch.tensor(losses, dtype=torch.float64))
        idx = int(torch.argmin(grad))
        return lrs[idx], losses[idx]

    def plot(self, skip_start: int = 0, skip_end: int = 0, log_lr: bool = True, ax: Any = None,
             steepest_lr: bool = True, *, save_path: str | os.PathLike | None = None) -> Any:
        """Plot loss against lr; returns the matplotlib ``Axes`` (None without matplotlib).

        Args:
          skip_start, skip_end: points left out at the start and end (as in
            :meth:`get_lrs_and_losses`).
          log_lr: logarithmic lr axis (default True).
          ax: draw into this Axes (the figure is then not shown); default None: a new
            figure, shown with ``plt.show()`` unless ``save_path`` is given.
          steepest_lr: mark the steepest-gradient point in red (default True).
          save_path: also save the figure to this file (e.g. ``"lr.png"``); with ``ax=None``
            the figure is made without pyplot (no display needed) and not shown.
        """
        try:
            import matplotlib  # noqa: F401  (optional dependency: pip install functional-optim[plot])
        except ImportError:
            warnings.warn("Matplotlib is missing, can't plot result")
            return None
        lrs, losses = self.get_lrs_and_losses(skip_start, skip_end)
        show = False
        if ax is None:
            if save_path is not None:
                from matplotlib.figure import Figure
                ax = Figure().subplots()
            else:
                import matplotlib.pyplot as plt
                _, ax = plt.subplots()
                show = True
        ax.plot(lrs, losses)
        if steepest_lr:
            lr, loss = self.get_steepest_gradient(skip_start, skip_end)
            if lr is not None and loss is not None:
                ax.scatter(lr, loss, s=75, marker="o", color="red", zorder=3, label="steepest gradient")
                ax.legend()
        if log_lr:
            ax.set_xscale("log")
        ax.set_xlabel("Learning rate")
        ax.set_ylabel("Loss")
        if save_path is not None:
            ax.figure.savefig(save_path)
        if show:
            import matplotlib.pyplot as plt
            plt.show()
        return ax
