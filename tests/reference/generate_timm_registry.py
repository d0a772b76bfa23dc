"""Generate tests/reference/timm_registry.pt: timm 1.0.31's ``create_optimizer_v2`` trajectories
for every registry name available in ``adapters.timm``, for ``tests/test_timm_registry.py``
(which never imports timm).

Run from ``tests/reference`` (torch 2.13, timm 1.0.31; torchvision is stubbed by
``timm_shim``)::

    cd tests/reference && python generate_timm_registry.py

The model, the inputs, the cases and the training loop are those of
``tests/test_timm_registry.py`` (imported from there, so both sides run the same code), here
given timm's ``create_optimizer_v2``. Torch's default dtype is float64 while recording.
Recorded per case (a plain dict, loadable with ``torch.load(..., weights_only=True)``): the
case (``opt``, ``lr``, ``kwargs``), the class name, the params after
each of ``CHECKPOINTS`` (flattened over ``named_parameters()``, one row per checkpoint), the
final ``state_dict`` state (one float64 vector and a layout, see ``encode_state``) and param
groups (without params), and the param names of each group; once, the initial params
(the same for every case).
"""

from __future__ import annotations

import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/: the shared model, cases and loop

from timm_shim import timm_optim  # noqa: E402

import test_timm_registry as shared  # noqa: E402

OUT = os.path.join(HERE, "timm_registry.pt")


def main() -> None:
    torch.set_default_dtype(torch.float64)
    cases = {}
    init = shared.flat_params(shared.build_model())
    for case_id, case in shared.CASES.items():
        info = timm_optim.get_optimizer_info(case['opt'].split('_')[-1])
        assert info.second_order == shared.is_second_order(case['opt']), case_id
        result = shared.run_case(timm_optim.create_optimizer_v2, case)
        assert torch.equal(result.pop('init'), init), case_id  # the same for every case: stored once
        cases[case_id] = {'opt': case['opt'], 'lr': case['lr'], 'kwargs': case['kwargs'], **result}
    reference = {
        'timm_version': sys.modules['timm'].__version__,
        'steps': shared.STEPS, 'checkpoints': shared.CHECKPOINTS, 'init': init,
        'cases': cases,
    }
    torch.save(reference, OUT)
    torch.load(OUT, weights_only=True)  # loadable as the test loads it
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes): {len(cases)} cases")


if __name__ == "__main__":
    main()
