"""The bench's core plan on fake machines: any CPU count, masks with holes, SMT siblings,
the command line's overrides and their errors.  Pure functions: no timing, no processes."""

from __future__ import annotations

import pytest

from wsstls.measure.cpuplan import CorePlan, plan_cores


def check_invariants(p: CorePlan) -> None:
    assert set(p.server) <= set(p.allowed) and set(p.client) <= set(p.allowed)
    assert p.server and p.client
    assert len(set(p.server)) == len(p.server)
    assert p.client_threads >= 1


def test_one_cpu_is_shared_and_says_so() -> None:
    p = plan_cores([3])
    check_invariants(p)
    assert p.server == p.client == (3,)
    assert p.shared
    assert any("one CPU" in n for n in p.notes)
    assert p.scaling_workers() == [1]
    assert p.client_pins(100) == [3]


def test_two_cpus_keep_the_old_layout_with_the_warning() -> None:
    p = plan_cores([0, 1])
    check_invariants(p)
    assert p.server == (1,) and p.client == (0,)
    assert not p.shared
    assert any("one CPU" in n and "saturates" in n for n in p.notes)
    assert p.client_threads == 1
    assert p.scaling_workers() == [1]  # no scaling table by default
    assert p.server_cpus(1) == (1,)
    assert p.server_cpus(2) == (1, 0) and p.borrows(2)  # --workers 2: the old layout


def test_four_cpus() -> None:
    p = plan_cores(range(4))
    check_invariants(p)
    assert p.server == (2, 3) and p.client == (0, 1)
    assert p.client_threads == 2 and p.notes == ()
    assert p.scaling_workers() == [1, 2]
    assert p.server_cpus(1) == (2,) and not p.borrows(2)
    assert p.client_pins(100) == [0, 1]
    assert p.client_pins(1) == [0]  # never more threads than connections


def test_sixteen_cpus_as_the_issue_measured() -> None:
    p = plan_cores(range(16))
    check_invariants(p)
    assert p.server == tuple(range(8, 16)) and p.client == tuple(range(8))
    assert p.client_threads == 8
    assert p.scaling_workers() == [1, 2, 4, 8]
    assert p.server_cpus(3) == (8, 9, 10)  # a loop and two offload threads
    assert not p.borrows(8) and p.borrows(9)
    assert p.client_pins(400) == list(range(8))


def test_sixty_four_cpus() -> None:
    p = plan_cores(range(64))
    check_invariants(p)
    assert len(p.server) == 32 and len(p.client) == 32
    assert not set(p.server) & set(p.client)
    assert min(p.server) > max(p.client)
    assert p.scaling_workers() == [1, 2, 4, 8, 16, 32]
    assert p.describe().startswith("CPUs 0-63 (64): server 32-63, client 0-31 (32 threads")


def test_odd_count_gives_the_client_the_larger_half() -> None:
    p = plan_cores(range(5))
    assert p.server == (3, 4) and p.client == (0, 1, 2)
    p3 = plan_cores([0, 1, 2])
    assert p3.server == (2,) and p3.client == (0, 1)


@pytest.mark.parametrize(
    ("allowed", "server", "client"),
    [
        ([0, 2], (2,), (0,)),
        ([1, 5, 6, 9], (6, 9), (1, 5)),
        ([0, 1, 2, 3, 8, 9, 10, 11], (8, 9, 10, 11), (0, 1, 2, 3)),
        ([4, 7, 30], (30,), (4, 7)),
    ],
)
def test_masks_with_holes(
    allowed: list[int], server: tuple[int, ...], client: tuple[int, ...]
) -> None:
    p = plan_cores(allowed)
    check_invariants(p)
    assert p.server == server and p.client == client
    # borrowing past the pool takes the client's CPUs, never one outside the mask
    assert set(p.server_cpus(len(allowed) + 3)) == set(allowed)


def test_smt_siblings_stay_on_one_side() -> None:
    # 8 cores x 2 threads, numbered as Linux does on most x86: cpu i and i+8 share a core
    siblings = {c: c % 8 for c in range(16)}
    p = plan_cores(range(16), siblings=siblings)
    check_invariants(p)
    for c in p.server:
        assert (c + 8) % 16 in p.server  # its sibling too
    assert set(p.server) == {4, 5, 6, 7, 12, 13, 14, 15}
    # one thread per core first: 1, 2 and 4 workers get whole cores of their own
    assert p.server[:4] == (4, 5, 6, 7)
    assert p.server_cpus(2) == (4, 5)


def test_one_smt_core_splits_its_threads() -> None:
    p = plan_cores([0, 1, 2, 3], siblings={0: 0, 1: 0, 2: 0, 3: 0})
    assert p.server == (2, 3) and p.client == (0, 1)


def test_overrides() -> None:
    p = plan_cores(range(16), server=[8, 9], client=[0, 1, 2, 3], client_threads=8)
    assert p.server == (8, 9) and p.client == (0, 1, 2, 3)
    assert p.client_pins(100) == [0, 1, 2, 3, 0, 1, 2, 3]
    only_server = plan_cores(range(4), server=[3])
    assert only_server.server == (3,) and only_server.client == (0, 1, 2)
    only_client = plan_cores(range(4), client=[0])
    assert only_client.server == (1, 2, 3) and only_client.client == (0,)
    both_one = plan_cores([0, 1], server=[0], client=[0])
    assert both_one.shared and any("share" in n for n in both_one.notes)
    every = plan_cores([0, 1], server=[0, 1])  # nothing left: the client shares
    assert every.client == (0, 1) and every.shared


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"server": [7]}, "--server-cpus: CPU 7 is not one"),
        ({"client": [0, 9]}, "--client-cpus: CPU 9 is not one"),
        ({"client_threads": 0}, "--client-threads"),
        ({"client_threads": 5000}, "--client-threads"),
    ],
)
def test_override_errors_name_the_option(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plan_cores(range(4), **kwargs)  # type: ignore[arg-type]


def test_no_cpu() -> None:
    with pytest.raises(ValueError, match="no CPU"):
        plan_cores([])
