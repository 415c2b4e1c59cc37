"""``python -m dlbook.grading``: same as the ``dlbook-grade`` console script."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
