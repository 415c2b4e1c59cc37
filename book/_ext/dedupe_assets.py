"""Drop repeated <script>/<link> entries from every page.

Jupyter Book 1 registers sphinx-thebe's and sphinx-togglebutton's inline set-up scripts twice,
so each page declared ``const THEBE_JS_URL`` twice and the browser logged a SyntaxError on
every page (caught by tests/test_site_browser.py). Keeping the first of identical entries fixes it.
"""

from __future__ import annotations

from typing import Any


def _key(asset: Any) -> tuple[str, str]:
    attributes = getattr(asset, "attributes", {}) or {}
    return (str(getattr(asset, "filename", asset) or ""), str(attributes.get("body", "")))


def _dedupe(app, pagename, templatename, context, doctree) -> None:
    for name in ("script_files", "css_files"):
        assets = context.get(name)
        if not assets:
            continue
        seen: set[tuple[str, str]] = set()
        unique = []
        for asset in assets:
            key = _key(asset)
            if key not in seen:
                seen.add(key)
                unique.append(asset)
        context[name] = unique


def setup(app) -> dict[str, Any]:
    app.connect("html-page-context", _dedupe, priority=900)  # after the theme has added its assets
    return {"parallel_read_safe": True, "parallel_write_safe": True}
