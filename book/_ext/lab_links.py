"""Two roles for what the book says about where the course runs.

``{colab}`labs/cnn/cnn-lab.ipynb``` links a notebook of the repository on Colab at the book's release
tag (tools/project.py computes the URL from book/_config.yml and pyproject.toml, so it is written
nowhere by hand); the build fails if the notebook does not exist.

``{contract}`torch``` prints a value of the last Colab check, benchmarks/results/colab-contract.json
(``python``, ``torch``, ``torchvision``, ``torchao``, ``passed``, ``total``, ``date``), and
``{contract}`oldest_torch``` the oldest torch the deployment lesson pairs (dlbook.compat): the
how-to-run page states the supported range from the run, not from memory."""

from __future__ import annotations

import sys
import json
from pathlib import Path

from docutils import nodes

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import project  # noqa: E402  (tools/ is not a package)


def colab_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    path = text.strip()
    if not (ROOT / path).is_file():
        msg = inliner.reporter.error(f"{{colab}}: no notebook {path} in the repository", line=lineno)
        return [inliner.problematic(rawtext, rawtext, msg)], [msg]
    node = nodes.reference(rawtext, "Open in Colab", refuri=project.colab_url(path), classes=["colab-link"])
    return [node], []


def contract_value(key: str) -> str:
    if key == "oldest_torch":
        sys.path.insert(0, str(ROOT))
        from dlbook.compat import OLDEST_TORCH

        return OLDEST_TORCH
    record = json.loads((ROOT / "benchmarks" / "results" / "colab-contract.json").read_text(encoding="utf-8"))
    if key == "date":
        return record["started"][:10]
    if key in ("passed", "total"):
        return str(record[key])
    return str(record["environment"][key])


def contract_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    try:
        value = contract_value(text.strip())
    except (KeyError, OSError, ValueError) as exc:
        msg = inliner.reporter.error(f"{{contract}}`{text}`: {exc!r} (run bash tools/check-colab)", line=lineno)
        return [inliner.problematic(rawtext, rawtext, msg)], [msg]
    return [nodes.literal(rawtext, value)], []


def setup(app):
    app.add_role("colab", colab_role)
    app.add_role("contract", contract_role)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
