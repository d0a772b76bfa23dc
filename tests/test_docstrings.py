"""Every docstring example runs and prints what it shows (doctest), in every module."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import adapters
import functional_optim


def _modules_with_examples():
    # modules whose docstrings hold at least one example (the others have nothing to run)
    finder = doctest.DocTestFinder()
    for package in (functional_optim, adapters):
        names = [package.__name__] + [info.name for info in
                                      pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
        for name in names:
            if any(test.examples for test in finder.find(importlib.import_module(name))):
                yield name


@pytest.mark.parametrize("name", sorted(_modules_with_examples()))
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
