"""dlbook: the code every notebook of the course shares.

Infrastructure:

* :mod:`dlbook.runtime` - ``device()``, ``profile()``, ``seed_everything()``, ``setup()``
* :mod:`dlbook.data` - checksummed dataset registry, mirror-aware fetching, the loaders and their
  splits (MNIST, Fashion-MNIST, CIFAR-10, text, series, generated tasks), on-device augmentation
* :mod:`dlbook.train` - the one ``fit``/``evaluate`` loop, its batch step and callbacks
* :mod:`dlbook.gradients` - float64 gradient checks (relative error, ``gradcheck``)
* :mod:`dlbook.plotting`, :mod:`dlbook.display` - figures, source listings, myst-nb ``glue``
* :mod:`dlbook.perf` - the one timer, FLOP and MAC formulas, model-FLOP utilisation
* :mod:`dlbook.results`, :mod:`dlbook.prose` - the committed full-profile results and the check
  that prose numbers come from runs

Lessons:

* :mod:`dlbook.scratch` - the from-scratch code the lessons derive, one implementation per equation
* :mod:`dlbook.models` - the architectures the chapters train (LeNet-5 to ResNet, recurrent,
  attention and fusion models, a small U-Net)
* :mod:`dlbook.numerics`, :mod:`dlbook.distributed`, :mod:`dlbook.deploy` - the optimization
  chapter's systems code (number formats, data-parallel training, export and quantisation)

Instructors:

* :mod:`dlbook.grading` - nbgrader release, batch autograding, LMS import and safe feedback
  (``pip install 'dlbook[grading]'``)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.3.0"
__all__ = ["by_profile", "device", "profile", "seed_everything", "setup"]


def __getattr__(name: str) -> Any:
    # Lazy: `python -m dlbook.grading` must not pay for importing torch.
    if name in __all__:
        return getattr(importlib.import_module(".runtime", __name__), name)
    raise AttributeError(f"module 'dlbook' has no attribute {name!r}")
