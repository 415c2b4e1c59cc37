"""The ``{colab}`` role: ``{colab}`labs/cnn/cnn-lab.ipynb``` links a notebook of the repository on
Colab at the book's release tag (tools/project.py computes the URL from book/_config.yml and
pyproject.toml, so it is written nowhere by hand). The build fails if the notebook does not exist."""

from __future__ import annotations

import sys
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


def setup(app):
    app.add_role("colab", colab_role)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
