import random

import numpy as np
import pytest
import torch

from dlbook import runtime


def test_profile_defaults_to_quick_without_cuda(monkeypatch):
    monkeypatch.delenv("DLBOOK_PROFILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.profile() == "quick"


def test_profile_defaults_to_full_with_cuda(monkeypatch):
    monkeypatch.delenv("DLBOOK_PROFILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.profile() == "full"


@pytest.mark.parametrize("value,expected", [("full", "full"), (" QUICK ", "quick")])
def test_profile_override(monkeypatch, value, expected):
    monkeypatch.setenv("DLBOOK_PROFILE", value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.profile() == expected


def test_profile_rejects_unknown_value(monkeypatch):
    monkeypatch.setenv("DLBOOK_PROFILE", "fast")
    with pytest.raises(ValueError, match="quick, full"):
        runtime.profile()


def test_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.delenv("DLBOOK_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert runtime.device().type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert runtime.device().type == "cpu"


def test_device_override(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("DLBOOK_DEVICE", "cpu")
    assert runtime.device() == torch.device("cpu")


def test_by_profile_picks_and_validates(monkeypatch):
    monkeypatch.setenv("DLBOOK_PROFILE", "full")
    assert runtime.by_profile({"quick": 1, "full": 2}) == 2
    assert runtime.by_profile({"quick": 1, "full": 2}, "quick") == 1
    with pytest.raises(KeyError, match="full"):
        runtime.by_profile({"quick": 1})


def test_seed_everything_reproduces_all_generators():
    def draw():
        return random.random(), float(np.random.rand()), torch.rand(3).tolist()

    runtime.seed_everything(123)
    first = draw()
    runtime.seed_everything(123)
    assert draw() == first
    runtime.seed_everything(124)
    assert draw() != first


def test_setup_prints_profile_and_device(monkeypatch, capsys):
    monkeypatch.setenv("DLBOOK_PROFILE", "quick")
    monkeypatch.setenv("DLBOOK_DEVICE", "cpu")
    which, dev = runtime.setup(seed=7)
    out = capsys.readouterr().out
    assert (which, dev.type) == ("quick", "cpu")
    assert "quick profile on cpu" in out and "seed 7" in out


def test_seeding_keeps_float32_exact_on_gpus():
    """TF32 rounding (cuDNN's default) would break the lessons' float32 equality checks on a GPU."""
    saved = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    try:
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        runtime.seed_everything(0)
        assert torch.backends.cudnn.allow_tf32 is False
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.backends.cudnn.allow_tf32 = saved[0]
        torch.set_float32_matmul_precision(saved[1])


def test_device_name_says_what_the_cpu_is():
    import os

    from dlbook.runtime import device_name

    name = device_name("cpu")
    assert name.startswith("cpu (") and name.endswith(f", {os.cpu_count()} cores)")
    assert device_name(torch.device("cpu")) == name
