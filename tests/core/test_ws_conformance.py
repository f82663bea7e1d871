"""The conformance cases of tests/autobahn_cases.py against the in-memory echo server.

Every case runs against a ring of 64 KiB (frames wrap around its end, so the
two-view path and streaming of larger frames both run); the cases other
than the large-message family also run against a small ring (4 KiB: most
frames beyond family 1 are streamed) and a mirrored one (one view always).
"""

from __future__ import annotations

import pytest
from autobahn_cases import (
    CASES,
    HANDSHAKE_CASES,
    Case,
    HandshakeCase,
    MemoryEchoDriver,
    run_case,
    run_handshake_case,
)

RINGS = {
    "ring64k": {"capacity": 64 * 1024},
    "ring4k": {"capacity": 4 * 1024},
    "mirrored": {"capacity": 64 * 1024, "mirrored": True},
}


def _params() -> list[object]:
    params = []
    for case in CASES:
        for ring in RINGS:
            if ring != "ring64k" and case.id.startswith("9."):
                continue
            params.append(pytest.param(case, ring, id=f"{case.id}-{ring}"))
    return params


@pytest.mark.parametrize(("case", "ring"), _params())
def test_case(case: Case, ring: str) -> None:
    driver = MemoryEchoDriver(**RINGS[ring])  # type: ignore[arg-type]
    try:
        result = run_case(case, driver, timeout=1.0)
    finally:
        driver.close()
    assert result.passed, f"{case.id} {case.description}: {result.detail}"


@pytest.mark.parametrize("case", HANDSHAKE_CASES, ids=[c.id for c in HANDSHAKE_CASES])
def test_handshake_case(case: HandshakeCase) -> None:
    driver = MemoryEchoDriver()
    try:
        result = run_handshake_case(case, driver, timeout=1.0)
    finally:
        driver.close()
    assert result.passed, f"{case.id} {case.description}: {result.detail}"


def test_case_ids_are_unique_and_cover_the_families() -> None:
    ids = [c.id for c in CASES] + [c.id for c in HANDSHAKE_CASES]
    assert len(ids) == len(set(ids))
    families = {i.split(".")[0] for i in ids}
    assert families == {"1", "2", "3", "4", "5", "6", "7", "9", "H"}


class _Silent(MemoryEchoDriver):
    """A broken server that never answers: every case must fail, not pass by default."""

    def receive(self, timeout: float) -> bytes:
        if self.conn.request is None or self.conn.state.name == "CONNECTING":
            return super().receive(timeout)
        super().receive(timeout)
        return b""

    @property
    def closed(self) -> bool:
        return False


class _NoEcho(MemoryEchoDriver):
    """A server that drops data messages: cases expecting echoes must fail."""

    def _pump(self) -> None:
        send = self.conn.send_message
        self.conn.send_message = lambda *a: None  # type: ignore[method-assign]
        try:
            super()._pump()
        finally:
            self.conn.send_message = send  # type: ignore[method-assign]


@pytest.mark.parametrize("case_id", ["1.1.1", "2.1", "3.1", "5.3", "6.4.1", "7.3.1", "7.9.1"])
def test_a_silent_server_fails_every_case(case_id: str) -> None:
    case = next(c for c in CASES if c.id == case_id)
    assert not run_case(case, _Silent(), timeout=0.05).passed


def test_a_server_that_drops_messages_fails() -> None:
    for case in CASES[:4]:
        assert not run_case(case, _NoEcho(), timeout=0.05).passed
