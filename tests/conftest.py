"""Suite-wide policy: what the fast tier (``pytest -m "not slow"``) leaves out.

Tests that run once per server design keep two designs in the fast tier: ``inline-ring``
(TLS, the C hot path, the framer) and ``plain`` (ws://), which between them take every
path of the server's Python; their runs for the other designs are marked ``slow`` here.
Other slow tests carry ``@pytest.mark.slow`` in their own modules.

``WSSTLS_TEST_RECORDS=openssl`` runs the suite with OpenSSL's records as the contexts'
default (``TLSContext(records=...)``; tests that choose a record path keep theirs). The
main suite runs on the default, wsstls's direct records; ``.ci/sanitize`` runs it on
OpenSSL's, so every TLS test covers both record layers in CI.
"""

from __future__ import annotations

import os

import pytest

from wsstls.tls import RECORDS, TLSContext

FAST_DESIGNS = {"inline-ring", "inline-direct", "plain"}

TEST_RECORDS = os.environ.get("WSSTLS_TEST_RECORDS")
if TEST_RECORDS is not None:
    if TEST_RECORDS not in RECORDS:
        raise pytest.UsageError(f"WSSTLS_TEST_RECORDS: one of {', '.join(RECORDS)}")
    defaults = TLSContext.__init__.__kwdefaults__
    assert defaults is not None and "records" in defaults
    defaults["records"] = TEST_RECORDS


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        spec = getattr(item, "callspec", None)
        if spec is None:
            continue
        design = spec.params.get("design", spec.params.get("any_server"))
        if isinstance(design, str) and design not in FAST_DESIGNS:
            item.add_marker(pytest.mark.slow)
