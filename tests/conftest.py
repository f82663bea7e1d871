"""Suite-wide policy: what the fast tier (``pytest -m "not slow"``) leaves out.

Tests that run once per server design keep two designs in the fast tier: ``inline-ring``
(TLS, the C hot path, the framer) and ``plain`` (ws://), which between them take every
path of the server's Python; their runs for the other designs are marked ``slow`` here.
Other slow tests carry ``@pytest.mark.slow`` in their own modules.
"""

from __future__ import annotations

import pytest

FAST_DESIGNS = {"inline-ring", "plain"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        spec = getattr(item, "callspec", None)
        if spec is None:
            continue
        design = spec.params.get("design", spec.params.get("any_server"))
        if isinstance(design, str) and design not in FAST_DESIGNS:
            item.add_marker(pytest.mark.slow)
