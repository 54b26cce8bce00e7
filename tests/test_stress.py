"""Thread stress (DESIGN §6): 8 threads mixing every operation on shared
allocators and shared pointers. Each read gives the value that was written or
UseAfterFreeError — never other bytes, never a crash — and the counters are
exact at the end.

Allocators under stress come from ALLOCATORS (factories), so an arena or a
custom allocator is one more entry.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from dataclasses import dataclass

import rsalloc
from rsalloc import DoubleFreeError, Int64, OwnershipError, Uint8, UseAfterFreeError, free

from conftest import LIBC
from test_threads import run_threads as start_and_join

THREADS = 8
OPS = 1500

ALLOCATORS = [lambda: rsalloc.malloc, lambda: rsalloc.calloc]


@dataclass(frozen=True)
class Shared:
    p: rsalloc.Pointer
    value: int  # every element holds it, and nobody writes it again
    owner: str  # the allocator that counts it


def run_threads(target) -> list[BaseException]:
    """Runs target(i) on THREADS threads switching as often as possible; returns what they raised."""
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            target(i)
        except BaseException as e:  # reported by the test
            errors.append(e)

    start_and_join(THREADS, guarded)
    return errors


def counters(a: rsalloc.Allocator | None = None) -> Counter[str]:
    s = (a or rsalloc).stats()
    return Counter(live_count=s.live_count, live_bytes=s.live_bytes, total_allocs=s.total_allocs,
                   total_frees=s.total_frees)


def test_mixed_operations_on_shared_pointers_keep_values_and_counters_exact():
    allocs = [make() for make in ALLOCATORS]
    by_name = {a.name: a for a in allocs}
    before = {name: counters(a) for name, a in by_name.items()}
    before_all = counters()
    pool: list[Shared] = []
    # What each thread did, per allocator: allocations and frees it saw succeed.
    done = [Counter() for _ in range(THREADS)]
    seen = [Counter() for _ in range(THREADS)]  # outcomes, per thread: += is not atomic across threads

    def publish(p: rsalloc.Pointer, value: int, owner: str) -> None:
        p[:] = [value] * p.count
        pool.append(Shared(p, value, owner))

    def pick(rng: random.Random) -> Shared:
        return pool[-1 - rng.randrange(min(32, len(pool)))]

    def work(t: int) -> None:
        rng = random.Random(t)
        mine = done[t]
        outcomes = seen[t]
        for _ in range(OPS):
            op = rng.random()
            if op < 0.2 or not pool:
                a = rng.choice(allocs)
                p = a(Int64, rng.randrange(1, 33))
                mine[a.name, "allocs"] += 1
                publish(p, rng.randrange(-(2**63), 2**63), a.name)
            elif op < 0.45:
                s = pick(rng)
                try:
                    got = s.p[rng.randrange(s.p.count)]
                    assert got == s.value, (got, s.value)
                    outcomes["read"] += 1
                except UseAfterFreeError:
                    outcomes["read: UseAfterFreeError"] += 1
            elif op < 0.6:
                s = pick(rng)
                try:
                    free(s.p)
                    mine[s.owner, "frees"] += 1
                    outcomes["free"] += 1
                except DoubleFreeError:
                    outcomes["free: DoubleFreeError"] += 1
            elif op < 0.7:
                s = pick(rng)
                try:
                    m = memoryview(s.p)
                except UseAfterFreeError:
                    outcomes["export: UseAfterFreeError"] += 1
                    continue
                # Pinned: even if another thread frees it now, the bytes stay.
                for _ in range(3):
                    assert m[rng.randrange(len(m))] == s.value
                m.release()
                outcomes["export"] += 1
            elif op < 0.78:
                s = pick(rng)
                try:
                    k = rng.randrange(s.p.count)
                    v = (s.p + k).cast(Uint8)
                    raw = v.read_bytes(8)
                    assert int.from_bytes(raw, sys.byteorder, signed=True) == s.value
                    outcomes["view"] += 1
                except UseAfterFreeError:
                    outcomes["view: UseAfterFreeError"] += 1
            elif op < 0.86:
                s = pick(rng)
                a = rng.choice(allocs)
                try:
                    q = a.realloc(s.p, rng.randrange(1, s.p.count + 1))  # shrink: all values kept
                except (DoubleFreeError, BufferError) as e:
                    outcomes[f"realloc: {type(e).__name__}"] += 1
                    continue
                mine[s.owner, "frees"] += 1
                mine[a.name, "allocs"] += 1
                assert all(x == s.value for x in q)
                pool.append(Shared(q, s.value, a.name))
                outcomes["realloc"] += 1
            elif op < 0.93:
                a = rng.choice(allocs)
                p = a(Int64, 4)
                mine[a.name, "allocs"] += 1
                addr = p.detach()
                mine[a.name, "frees"] += 1  # detached blocks stop counting
                try:
                    free(p)
                    raise AssertionError("free of a detached pointer succeeded")
                except OwnershipError:
                    pass
                LIBC.free(addr)
                outcomes["detach"] += 1
            else:
                a = rng.choice(allocs)
                p = a(Int64, 2).autofree()
                mine[a.name, "allocs"] += 1
                p[1] = 5
                del p  # the last reference: freed here
                mine[a.name, "frees"] += 1
                outcomes["autofree"] += 1

    errors = run_threads(work)
    assert errors == [], errors[:3]
    for s in pool:
        if s.p.alive:
            free(s.p)
            done[0][s.owner, "frees"] += 1
    for name, a in by_name.items():
        allocs_n = sum(d[name, "allocs"] for d in done)
        frees_n = sum(d[name, "frees"] for d in done)
        got = counters(a) - before[name]
        assert got["total_allocs"] == allocs_n and got["total_frees"] == frees_n, name
        assert counters(a)["live_count"] == before[name]["live_count"]
        assert counters(a)["live_bytes"] == before[name]["live_bytes"]
    after = counters()
    assert after["live_count"] == before_all["live_count"]
    assert after["live_bytes"] == before_all["live_bytes"]
    # The races happened: both sides of each were seen.
    outcomes = sum(seen, Counter())
    for kind in ("read", "read: UseAfterFreeError", "free", "free: DoubleFreeError", "export", "realloc"):
        assert outcomes[kind] > 0, (kind, outcomes)


def test_frees_racing_reads_and_exports_of_one_pointer():
    """One thread frees; seven read, export and view the same pointer meanwhile."""
    before = counters()
    for round_ in range(100):
        p = rsalloc.malloc(Int64, 16)
        p[:] = [round_] * 16
        ended = [None] * THREADS  # each thread writes only its own entry

        def race(t: int) -> None:
            if t == 0:
                free(p)
                ended[t] = "freed"
                return
            while True:
                try:
                    if t % 2:
                        assert p[t] == round_
                    else:
                        with memoryview(p) as m:
                            assert m[t] == round_
                except UseAfterFreeError:
                    ended[t] = "UseAfterFreeError"
                    return

        assert run_threads(race) == []
        assert not p.alive and ended == ["freed"] + ["UseAfterFreeError"] * (THREADS - 1)
    after = counters()
    assert after["live_count"] == before["live_count"] and after["live_bytes"] == before["live_bytes"]
    assert after["total_frees"] - before["total_frees"] == 100


def test_threads_share_one_arena_with_mixed_operations():
    """8 threads allocate, read, realloc, free (no-op) and export on one arena
    of each kind: blocks never overlap (each keeps its thread's values) and
    the counts are exact; the release then returns every counter."""
    for make in (rsalloc.Arena, lambda: rsalloc.Arena(rsalloc.malloc)):
        before = counters()
        arena = make()
        shared = arena(Int64, 64)
        shared[:] = [7] * 64
        mine: list[list[rsalloc.Pointer]] = [[] for _ in range(THREADS)]

        def work(i: int) -> None:
            rng = random.Random(i)
            for _ in range(OPS // 3):
                op = rng.random()
                if op < 0.45 or not mine[i]:
                    p = arena(Int64, rng.randint(0, 16))
                    p[:] = [i] * len(p)
                    mine[i].append(p)
                elif op < 0.65:
                    q = mine[i][rng.randrange(len(mine[i]))]
                    assert q[:] == [i] * len(q)
                elif op < 0.75:
                    arena.free(shared)  # an arena frees at release: a no-op
                    assert shared[rng.randrange(64)] == 7
                elif op < 0.9:
                    q = mine[i].pop()
                    r = arena.realloc(q, len(q) + 1)
                    r[-1] = i
                    assert not q.alive and r[:] == [i] * len(r)
                    mine[i].append(r)
                else:
                    m = memoryview(shared)
                    assert m[rng.randrange(64)] == 7
                    m.release()

        assert run_threads(work) == []
        live = 1 + sum(len(ps) for ps in mine)
        assert len(arena) == live == arena.stats().live_count
        assert arena.stats().live_bytes == 64 * 8 + sum(p.nbytes for ps in mine for p in ps)
        for i, ps in enumerate(mine):
            assert all(p[:] == [i] * len(p) for p in ps)
        arena.release_all()
        assert not shared.alive and not any(p.alive for ps in mine for p in ps)
        after = counters()
        assert (after["live_count"], after["live_bytes"]) == (before["live_count"], before["live_bytes"])


def test_an_arena_release_racing_reads_gives_values_or_use_after_free():
    for make in (rsalloc.Arena, lambda: rsalloc.Arena(rsalloc.calloc)):
        for _ in range(20):
            arena = make()
            p = arena(Int64, 32)
            p[:] = [5] * 32
            seen: Counter[str] = Counter()

            def race(i: int) -> None:
                if i == 0:
                    arena.release_all()
                    return
                for k in range(200):
                    try:
                        assert p[k % 32] == 5
                        seen["value"] += 1
                    except UseAfterFreeError:
                        seen["dead"] += 1

            assert run_threads(race) == []
            assert not p.alive and set(seen) <= {"value", "dead"}
