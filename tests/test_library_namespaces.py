"""The library namespaces (``fo.timm``, ``fo.monai``, ``adapters.timm``, ``adapters.monai``)
never import the libraries they mirror: one fresh interpreter builds every optimizer they
offer (every name of timm's registry that is available here, through the factory) and
lists what it imported."""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

_CODE = """
import sys, torch
import functional_optim as fo, adapters
from adapters import monai, timm
model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
for name in timm.list_optimizers():
    timm.create_optimizer_v2(model, name, lr=1e-3)
for name in fo.timm.__all__:
    getattr(fo.timm, name)(lr=1e-3)
fo.monai.novograd()
monai.Novograd(model.parameters())
import generate_timm_adam_family  # the reference loader the tests share: no timm at import
print(sorted(m for m in sys.modules if m.split('.')[0] in ('timm', 'torchvision', 'timm_shim', 'monai',
                                                           'bitsandbytes')))
"""


def test_timm_monai_and_torchvision_are_never_imported():
    out = subprocess.run([sys.executable, "-c", _CODE], capture_output=True, text=True, timeout=300,
                         cwd=os.path.join(HERE, "reference"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"
