"""dlbook: the code every notebook of the course shares.

* :mod:`dlbook.runtime` - ``device()``, ``profile()``, ``seed_everything()``, ``setup()``
* :mod:`dlbook.data` - checksummed dataset registry, mirror-aware fetching, MNIST splits
* :mod:`dlbook.train` - the one ``fit``/``evaluate`` loop
* :mod:`dlbook.gradients` - float64 gradient checks (relative error, ``gradcheck``)
* :mod:`dlbook.plotting` - training curves, image grids, per-layer histograms
* :mod:`dlbook.scratch` - the from-scratch code the lessons derive
* :mod:`dlbook.models` - LeNet-5 to ResNet and a small U-Net, parameter and MAC counting
* :mod:`dlbook.grading` - nbgrader release and batch autograding for instructors
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["by_profile", "device", "profile", "seed_everything", "setup"]


def __getattr__(name: str) -> Any:
    # Lazy: `python -m dlbook.grading` must not pay for importing torch.
    if name in __all__:
        return getattr(importlib.import_module(".runtime", __name__), name)
    raise AttributeError(f"module 'dlbook' has no attribute {name!r}")
