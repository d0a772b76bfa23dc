"""Helpers of ``LearningRateFinder``: batch extraction and transfer, state caching, progress."""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import types
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch


def default_image_extractor(x: Any) -> Any:
    """``x["image"]`` for a dict batch, else ``x[0]``."""
    return x["image"] if isinstance(x, dict) else x[0]


def default_label_extractor(x: Any) -> Any:
    """``x["label"]`` for a dict batch, else ``x[1]``."""
    return x["label"] if isinstance(x, dict) else x[1]


def to_device(obj: Any, device: Any, non_blocking: bool) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(o, device, non_blocking) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    return obj


class StateCache:
    """Deep copies of state dicts, in memory or in ``torch.save`` files (removed on exit)."""

    def __init__(self, in_memory: bool, cache_dir: str | None, pickle_module: types.ModuleType,
                 pickle_protocol: int):
        self.in_memory, self.cache_dir = in_memory, cache_dir
        self.pickle_module, self.pickle_protocol = pickle_module, pickle_protocol
        self.items: dict[str, Any] = {}
        self._cleanup = weakref.finalize(self, _remove_files, self.items, not in_memory)

    def store(self, key: str, state: dict[str, Any]) -> None:
        if self.in_memory:
            self.items[key] = copy.deepcopy(state)
            return
        fd, path = tempfile.mkstemp(prefix=f"lr_finder_{key}_", suffix=".pt", dir=self.cache_dir)
        os.close(fd)
        torch.save(state, path, pickle_module=self.pickle_module, pickle_protocol=self.pickle_protocol)
        self.items[key] = path

    def retrieve(self, key: str) -> dict[str, Any]:
        if self.in_memory:
            return copy.deepcopy(self.items[key])  # loading must never alias the cache
        return torch.load(self.items[key], pickle_module=self.pickle_module, weights_only=False)


def _remove_files(items: dict[str, Any], files: bool) -> None:
    for path in items.values() if files else ():
        with contextlib.suppress(OSError):
            os.remove(path)


def cycle_batches(loader: Iterable, image_extractor: Callable, label_extractor: Callable) -> Iterator:
    """Batches as ``(inputs, labels)``, restarting the loader when it is exhausted."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield image_extractor(batch), label_extractor(batch)
        if empty:
            raise ValueError("train_loader yielded no batches")


def progress(num_iter: int, verbose: bool) -> tuple[Iterable, Callable]:
    if verbose:
        try:
            import tqdm
        except ImportError:
            return _printing_range(num_iter), print
        return tqdm.trange(num_iter, desc="Computing optimal learning rate"), tqdm.tqdm.write
    return range(num_iter), print


def _printing_range(num_iter: int) -> Iterator[int]:
    for i in range(num_iter):
        print(f"Computing optimal learning rate, iteration {i + 1}/{num_iter}")
        yield i
