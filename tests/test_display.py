"""dlbook.display.glue displays exactly what myst-nb's glue displays (the book's prose reads it),
without importing myst_nb in the lesson (3 s of CPU per lesson, see dlbook/display.py)."""

from __future__ import annotations

import subprocess
import sys

import IPython.display
import numpy as np
import pytest
import torch

from dlbook import display


def _recorded(glue, monkeypatch, target, *args, **kwargs) -> list:
    calls = []
    monkeypatch.setattr(target[0], target[1], lambda data, **kw: calls.append((data, kw)))
    glue(*args, **kwargs)
    return calls


@pytest.mark.parametrize("value", [0.8734, 3, "quick", np.float64(0.25), torch.tensor(1.5), [1, 2]])
@pytest.mark.parametrize("shown", [False, True])
def test_glue_displays_what_myst_nb_displays(value, shown, monkeypatch):
    import myst_nb.ext.glue as reference

    ours = _recorded(display.glue, monkeypatch, (IPython.display, "display"), "x", value, display=shown)
    theirs = _recorded(reference.glue, monkeypatch, (reference, "ipy_display"), "x", display._plain(value), display=shown)
    assert ours == theirs and len(ours) == 1
    data, kwargs = ours[0]
    assert kwargs["metadata"]["scrapbook"] == {"name": "x", "mime_prefix": "" if shown else display.GLUE_PREFIX}


def test_glue_returns_plain_scalars():
    assert type(display.glue("y", np.float64(0.5))) is float and type(display.glue("z", torch.tensor(2))) is int


def test_a_lesson_that_glues_does_not_import_myst_nb_or_nbformat():
    script = ("import sys\nfrom dlbook.display import glue\nglue('a', 0.5)\n"
              "print(sorted(m for m in ('myst_nb', 'nbformat', 'jsonschema') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out
