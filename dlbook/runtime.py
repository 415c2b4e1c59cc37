"""Where and how a notebook runs: device, execution profile and seeding.

Every lesson starts with :func:`setup`, which seeds all random generators and prints the profile
and device, so a reader always knows which numbers they are looking at.
"""

from __future__ import annotations

import os
import platform
import random
from collections.abc import Mapping
from typing import Literal, TypeVar

import numpy as np
import torch

Profile = Literal["quick", "full"]
PROFILES: tuple[Profile, ...] = ("quick", "full")
T = TypeVar("T")


def device() -> torch.device:
    """The best available accelerator: CUDA, else Apple MPS, else the CPU.

    ``DLBOOK_DEVICE`` (e.g. ``cpu``) forces a device, which is handy to compare runs.
    """
    forced = os.environ.get("DLBOOK_DEVICE")
    if forced:
        return torch.device(forced)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_name(dev: torch.device | str) -> str:
    """How result files name the machine: the GPU's model, or ``cpu (x86_64, 2 cores)``."""
    dev = torch.device(dev)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{dev.type} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def profile() -> Profile:
    """The execution profile: ``quick`` (CPU, small real data) or ``full`` (GPU, full data).

    ``DLBOOK_PROFILE`` overrides; otherwise ``full`` when CUDA is available, else ``quick``.
    """
    value = os.environ.get("DLBOOK_PROFILE", "").strip().lower()
    if value:
        if value not in PROFILES:
            raise ValueError(
                f"DLBOOK_PROFILE={value!r} is not a profile; use one of {', '.join(PROFILES)}"
            )
        return value  # type: ignore[return-value]
    return "full" if torch.cuda.is_available() else "quick"


def by_profile(values: Mapping[str, T], which: Profile | None = None) -> T:
    """Pick the value for the current profile from ``{"quick": ..., "full": ...}``."""
    which = which or profile()
    missing = [p for p in PROFILES if p not in values]
    if missing:
        raise KeyError(f"by_profile needs a value for every profile; missing {missing}")
    return values[which]


def seed_everything(seed: int = 0, deterministic: bool = True) -> int:
    """Seed Python, NumPy and PyTorch (all devices) so CPU runs reproduce exactly.

    ``deterministic`` also asks PyTorch for deterministic kernels where it has them
    (``warn_only`` so an op without one still runs, with a warning, instead of failing).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA and MPS generators too
    os.environ["PYTHONHASHSEED"] = str(seed)
    if deterministic:
        # cuBLAS needs this workspace setting to be deterministic on CUDA.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        # float32 means float32 on every device. cuDNN's default rounds convolution and RNN inputs
        # to TF32 (10-bit mantissa): measured on an H100, that moved a packed BiLSTM's outputs by
        # 5.7e-4 and a hand-written conv backward's training curve by 3e-3 from their float32
        # references. The speed lesson switches TF32 on where it is the point.
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    return seed


def setup(seed: int = 0) -> tuple[Profile, torch.device]:
    """Seed everything and print the profile and device this notebook runs on."""
    seed_everything(seed)
    which, dev = profile(), device()
    hint = ""
    if which == "quick" and dev.type == "cpu":
        hint = " (set DLBOOK_PROFILE=full on a GPU for the book's reported results)"
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    print(f"{which} profile on {name}, torch {torch.__version__}, seed {seed}{hint}")
    return which, dev
