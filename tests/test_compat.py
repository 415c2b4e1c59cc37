"""dlbook.compat: the deployment stack paired with the installed torch (issue 19: torchao 0.18 was
installed beside torch 2.9.1 and the deployment lesson stopped at its import)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import tomllib
import torch

from dlbook import compat

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("torch_version", "expected"), [
    ("2.9.1", "torchao==0.15.*"),
    ("2.9.1+cu126", "torchao==0.15.*"),  # Colab's build tag does not change the pairing
    ("2.10.0", "torchao==0.16.*"),
    ("2.10.2+cpu", "torchao==0.16.*"),
    ("2.11.0", "torchao>=0.17"),
    ("2.14.1+cu130", "torchao>=0.17"),  # the course's pin
])
def test_torchao_pairs_with_the_torch_release(torch_version, expected):
    assert compat.torchao_requirement(torch_version) == expected


@pytest.mark.parametrize("torch_version", ["2.9.0", "2.8.0", "2.4.1"])
def test_a_torch_older_than_the_lessons_needs_is_a_clear_error(torch_version):
    with pytest.raises(RuntimeError, match=r"needs torch >= 2\.9\.1.*pip install 'torch>=2\.9\.1'"):
        compat.torchao_requirement(torch_version)


def test_the_deploy_extra_declares_the_same_floors():
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]["deploy"]
    expected = [f"{name}{floor}" for name, floor in compat.DEPLOY_FLOORS.items()]
    oldest_torchao = compat.TORCHAO_FOR_TORCH[-1][1].removeprefix("==").removesuffix(".*")
    assert sorted(extra) == sorted(expected + [f"torchao>={oldest_torchao}"])


def test_the_course_environment_already_pairs():
    assert compat.missing_deploy_requirements() == [], "the pinned environment must hold a paired deploy stack"
    compat.ensure_deploy_stack(install=False)  # nothing to do, nothing raised


def test_a_mismatched_torchao_is_found_and_named_with_its_command(monkeypatch):
    # this environment's torchao (>= 0.17) beside a torch 2.9.1: the pair issue 19 found broken
    monkeypatch.setattr(torch, "__version__", "2.9.1+cu126")
    assert compat.missing_deploy_requirements() == ["torchao==0.15.*"]
    with pytest.raises(ImportError, match=r"run: pip install 'torchao==0\.15\.\*'"):
        compat.ensure_deploy_stack(install=False)


def test_on_colab_the_paired_torchao_is_installed(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.9.1")
    calls = []

    def fake_pip(command, check):
        calls.append(command)
        monkeypatch.setattr(torch, "__version__", "2.14.1")  # as if the paired torchao now matched
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(compat.subprocess, "run", fake_pip)
    monkeypatch.setenv("DLBOOK_INSTALL_MISSING", "1")
    compat.ensure_deploy_stack()
    assert len(calls) == 1 and calls[0][-1] == "torchao==0.15.*" and calls[0][1:4] == ["-m", "pip", "install"]


def test_the_installer_reports_a_pip_that_did_not_help(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.9.1")
    monkeypatch.setattr(compat.subprocess, "run", lambda command, check: subprocess.CompletedProcess(command, 0))
    with pytest.raises(ImportError, match="still not met"):
        compat.ensure_deploy_stack(install=True)


def test_the_pinned_torch_is_requirements_txts():
    import re
    from pathlib import Path

    pins = (Path(__file__).resolve().parents[1] / "requirements.txt").read_text()
    assert re.search(rf"^torch=={re.escape(compat.PINNED_TORCH)}$", pins, re.M), "requirements.txt pins another torch"
    assert compat.is_pinned_torch(f"{compat.PINNED_TORCH}+cu130") and not compat.is_pinned_torch("2.9.1")
