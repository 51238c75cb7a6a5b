"""kill -9 of the agent at random points across ingest, publish and push (mid-blob included), then restart:
every trial must converge to the state of an uninterrupted run (status, published tags and digests, the
store's blobs and index.json, what was pushed), the store never shows a partial blob under a digest name (checked
on disk after every kill, and by GETting every published blob at the end), and no temp file is left.

Kill points are armed in the agent process (tests/faults/killhook.py: the N-th time it reaches a named point it
SIGKILLs itself) or fired by the test after a random delay while a throttled ingest runs ("timer")."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import Bundle, Bundles, Keys, Reference, complete, make_agent
from tests.faults.killhook import POINTS
from tests.faults.support import (
    SEED,
    TIMEOUT,
    FaultAgent,
    Tally,
    bundle_states,
    check_served_blobs,
    check_store,
    journal,
    leftovers,
    registry_tags,
    rng,
    served_state,
    store_blobs,
    trials,
    wait_until,
)
from tests.support.registry import Registry

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(TIMEOUT)]


class Points:
    """Every kill point in turn (shuffled, timer kills three times as often), so a bounded run covers them all."""

    def __init__(self, r: Any):
        self.r = r
        self.queue: list[str] = []

    def next(self) -> str:
        if not self.queue:
            self.queue = [*POINTS, "timer", "timer", "timer"]
            self.r.shuffle(self.queue)
        return self.queue.pop()


def choose(r: Any, points: Points, agent: FaultAgent, b: Bundle, ref: Reference) -> str:
    point = points.next()
    if point == "timer":
        return f"timer:{r.uniform(0.05, ref.seconds * 1.2):.2f}"
    missing = len([d for d in b.sizes if d not in store_blobs(agent.state)])
    if point in ("blob-start", "mid-blob", "blob-before-rename", "blob-after-rename"):
        if missing == 0:
            return r.choice(["publish-in-tx", "push-mid-upload", "before-complete"])
        big = point == "mid-blob" and r.random() < 0.5  # the two 1.5 MB layers come last in the tar
        return f"{point}@{max(1, missing - r.randrange(2)) if big else r.randint(1, missing)}"
    if point == "batch-before-sync" and missing == 0:  # nothing left to write: no batch to sync
        return r.choice(["publish-in-tx", "push-mid-upload", "before-complete"])
    if point == "push-mid-upload":
        return f"{point}@{r.randint(1, 12)}"
    if point == "push-before-manifest":
        return f"{point}@{r.randint(1, 8)}"
    return point


def check_after_kill(agent: FaultAgent, b: Bundle, ref: Reference, point: str) -> None:
    bad = check_store(agent.state, b.sizes)
    n = journal(agent.state, "SELECT COUNT(*) FROM refs")
    if n and n[0][0] not in (0, ref.refs):
        bad.append(f"{n[0][0]} of {ref.refs} references published (not atomic)")
    assert not bad, f"after kill at {point} (seed {SEED}): {bad}\n{agent.log_tail()}"


def run_trial(root: Path, b: Bundle, keys: Keys, ref: Reference, r: Any, points: Points,
              kills: Counter[str]) -> int:
    """Kill 1-3 times, then let it finish; returns the number of kills that happened."""
    n = 0
    with Registry() as target:
        agent = make_agent(root, keys, target)
        try:
            for k in range(r.choice([1, 2, 3, 3])):
                point = choose(r, points, agent, b, ref)
                timer = point.startswith("timer:")
                agent.start_armed(None if timer else point)
                if k == 0:
                    agent.wait_healthy()
                    agent.drop_file(b.path)
                if timer:
                    time.sleep(float(point.split(":")[1]))
                    if agent.exited() is None and not complete(agent):
                        agent.kill9()
                        kills[f"timer ({bundle_states(agent.state).get('rich 1.0.0', 'not admitted')})"] += 1
                        n += 1
                    else:
                        agent.stop()
                else:
                    wait_until(lambda: agent.exited() is not None or complete(agent), 60,
                               f"kill at {point} or completion\n{agent.log_tail()}")
                    rc = agent.reap()
                    if rc is None:  # the point was not reached in this run
                        agent.stop()
                    else:
                        assert rc == -9, f"agent exited {rc} (fault {point})\n{agent.log_tail()}"
                        kills[point.split("@")[0]] += 1
                        n += 1
                check_after_kill(agent, b, ref, point)
                if complete(agent):
                    break
            agent.start_armed(None)
            agent.wait_healthy()
            wait_until(lambda: complete(agent), 60, f"convergence\n{agent.log_tail()}")
            got = served_state(agent)
            for key in ("status", "tags", "blobs", "store_index"):
                assert got[key] == ref.served[key], f"{key} differs after kills (seed {SEED})\n{agent.log_tail()}"
            assert check_served_blobs(agent) == []
            assert registry_tags(target.host, sorted({k.rsplit(":", 1)[0] for k in ref.pushed})) == ref.pushed
        finally:
            agent.stop()
    assert leftovers(root) == [], f"temp files left (seed {SEED})"
    assert check_store(agent.state, b.sizes) == []
    return n


def test_kill9_at_random_points_converges(fault_bundles: Bundles, fault_keys: Keys, reference: Reference,
                                          tmp_path: Path) -> None:
    want = trials(20)
    r = rng("kill")
    kills: Counter[str] = Counter()
    points = Points(r)
    tally = Tally("kill -9 during ingest, publish and push (then restart)", na=("refused",))
    done = runs = 0
    while done < want:
        runs += 1
        assert runs <= want * 2, f"only {done} kills in {runs} trials"
        done += run_trial(tmp_path / f"trial-{runs:03d}", fault_bundles.rich, fault_keys, reference, r,
                          points, kills)
        tally.converged += 1
    tally.trials = done
    tally.notes.append(f"{runs} runs to completion; kills by point: " +
                       ", ".join(f"{k} {v}" for k, v in sorted(kills.items())))
    tally.save()
