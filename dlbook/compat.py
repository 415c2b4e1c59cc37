"""What the deployment lesson needs beside torch, paired with the torch that is installed.

onnx, onnxscript and onnxruntime are ordinary dependencies with floors (the ``deploy`` extra:
``pip install 'dlbook[deploy]'``). torchao is not: each torchao wheel is built against one torch
release and declares no torch requirement, so pip pairs the newest torchao with any torch, and on
an older torch it fails at import (torchao 0.18 with torch 2.9.1: ``cannot import name
'ScalingType'``). :func:`ensure_deploy_stack` checks every piece against the installed torch and
either installs the matching set (on Colab, or with ``DLBOOK_INSTALL_MISSING=1``) or stops with the
exact ``pip install`` command.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import shlex
import subprocess
import sys

from packaging.specifiers import SpecifierSet
from packaging.version import Version

# The torch the course pins (requirements.txt; a test checks they agree). A lesson whose float32
# results differ in the last bits between torch releases bounds them tightly only under this one.
PINNED_TORCH = "2.14.1"

# Floors the deployment lesson needs (the `deploy` extra of pyproject.toml says the same; a test checks).
DEPLOY_FLOORS = {"onnx": ">=1.16", "onnxscript": ">=0.3", "onnxruntime": ">=1.18"}
# torchao for each torch, newest first: (oldest torch of the row, torchao requirement). From the
# compatibility table in torchao's own __init__ (0.15.0 and 0.16.0: "built against torch 2.9.1",
# "built against torch 2.10.0"; 0.17 and 0.18 load their kernels only on torch >= 2.11).
TORCHAO_FOR_TORCH = (
    ("2.11.0", ">=0.17"),
    ("2.10.0", "==0.16.*"),
    ("2.9.1", "==0.15.*"),
)
# The lesson uses torchao's Int8Tensor and Int8DynamicActivationInt8WeightConfig, first released
# together in torchao 0.15, which needs torch 2.9.1: the oldest torch the deployment lesson runs on.
OLDEST_TORCH = TORCHAO_FOR_TORCH[-1][0]


def is_pinned_torch(torch_version: str | None = None) -> bool:
    """Whether ``torch_version`` (default: the installed torch) is the course's pinned release."""
    if torch_version is None:
        import torch

        torch_version = torch.__version__
    return _release(torch_version) == Version(PINNED_TORCH)


def _release(version: str) -> Version:
    """``2.9.1+cu126`` -> 2.9.1: local build tags and pre-release markers do not change the pairing."""
    return Version(Version(version).base_version)


def torchao_requirement(torch_version: str) -> str:
    """The torchao that pairs with ``torch_version``, as a pip requirement."""
    found = _release(torch_version)
    for oldest, requirement in TORCHAO_FOR_TORCH:
        if found >= Version(oldest):
            return f"torchao{requirement}"
    raise RuntimeError(f"the deployment lesson needs torch >= {OLDEST_TORCH} (torchao's int8 tensors); "
                       f"this runtime has torch {torch_version}: pip install 'torch>={OLDEST_TORCH}'")


def deploy_requirements(torch_version: str | None = None) -> list[str]:
    if torch_version is None:
        import torch

        torch_version = torch.__version__
    return [f"{name}{floor}" for name, floor in DEPLOY_FLOORS.items()] + [torchao_requirement(torch_version)]


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def missing_deploy_requirements(torch_version: str | None = None) -> list[str]:
    """The requirements of :func:`deploy_requirements` that the installed packages do not meet."""
    missing = []
    for requirement in deploy_requirements(torch_version):
        name = requirement.split(next(c for c in requirement if c in "<>=!~"))[0]
        installed = _installed(name)
        spec = SpecifierSet(requirement[len(name):])
        if installed is None or not spec.contains(_release(installed), prereleases=True):
            missing.append(requirement)
    return missing


def ensure_deploy_stack(install: bool | None = None) -> None:
    """Make sure onnx, onnxscript, onnxruntime and the torchao of this torch are installed.

    ``install`` (default: on Colab, or when ``DLBOOK_INSTALL_MISSING=1``) pip-installs what is
    missing or mismatched, as the lessons' first cell installs dlbook there; otherwise a clear
    ImportError names the command. Nothing is installed when everything already pairs.
    """
    missing = missing_deploy_requirements()
    if not missing:
        return
    if install is None:
        install = "google.colab" in sys.modules or os.environ.get("DLBOOK_INSTALL_MISSING") == "1"
    command = [sys.executable, "-m", "pip", "install", "-q", *missing]
    if not install:
        raise ImportError("this lesson needs " + ", ".join(missing) + " with the torch installed here; run: "
                          + " ".join(shlex.quote(part) for part in ["pip", "install", *missing]))
    print("installing", ", ".join(missing), "(paired with this torch)")
    subprocess.run(command, check=True)
    importlib.invalidate_caches()
    still = missing_deploy_requirements()
    if still:
        raise ImportError(f"pip ran, but {', '.join(still)} is still not met")
