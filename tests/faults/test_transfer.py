"""Transfer faults through the real agent: a file still being written (slowly, and with stalls longer than
settle_seconds), a copy that stops midway and is completed later, the same bundle under two names, bundles out
of order (sequence 2 before 1), and a ``.part`` that is never renamed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from tests.faults.conftest import Bundles, Keys
from tests.faults.support import (
    TIMEOUT,
    Tally,
    bundle_states,
    journal,
    journal_status,
    rng,
    store_blobs,
    trials,
    wait_until,
)
from tests.support.agent import AgentProc

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(TIMEOUT)]


def events(agent: AgentProc) -> list[str]:
    return [e for (e,) in journal(agent.state, "SELECT event FROM history ORDER BY id")]


def attempts(agent: AgentProc, name: str) -> list[int]:
    b = next(x for x in journal_status(agent.state) if f"{x['name']} {x['version']}" == name)
    return [s["attempts"] for s in b["steps"]]


def slow_copy(src: Path, dest: Path, pieces: int, pause: float, stall_at: int | None, stall: float,
              check: object) -> None:
    data = src.read_bytes()
    step = len(data) // pieces + 1
    with open(dest, "wb") as f:
        for i, pos in enumerate(range(0, len(data), step)):
            f.write(data[pos:pos + step])
            f.flush()
            time.sleep(stall if i == stall_at else pause)
            check()  # type: ignore[operator]


def test_file_still_being_written(fault_bundles: Bundles, fault_keys: Keys, tmp_path: Path) -> None:
    """Each copy grows in pieces with pauses below settle_seconds, and stalls once for longer than it
    (the tar is not complete yet): nothing is read before the last byte, and it is read once."""
    r = rng("slow-writer")
    n = trials(2)
    tally = Tally("transfer: file still being written (slow writer, stalls > settle_seconds)", trials=n,
                  na=("refused",))
    for i in range(n):
        with AgentProc(tmp_path / f"a{i}", [fault_keys.pub]) as agent:
            agent.start()

            def not_yet() -> None:
                assert "rich 1.0.0" not in bundle_states(agent.state), "read while still being written"

            slow_copy(fault_bundles.rich.path, agent.drop / "slow.tar", pieces=r.randint(6, 10), pause=0.2,
                      stall_at=r.randint(1, 4), stall=1.5, check=not_yet)
            wait_until(lambda: bundle_states(agent.state).get("rich 1.0.0") == "complete", 30,
                       f"complete\n{agent.log_tail()}")
            assert attempts(agent, "rich 1.0.0") == [1, 1]
            assert agent.quarantined() == [] and "unsettled" not in agent.log.read_text()
            tally.converged += 1
    tally.save()


def test_copy_stopped_midway_then_completed(fault_bundles: Bundles, fault_keys: Keys, tmp_path: Path) -> None:
    """A copy that stops (a part missing) is refused as truncated once incomplete_timeout passes; the full
    copy under the same name is then accepted."""
    tally = Tally("transfer: copy stopped midway (part missing), completed later", trials=1)
    with AgentProc(tmp_path / "a", [fault_keys.pub], incomplete_timeout=2.0) as agent:
        agent.start()
        data = fault_bundles.rich.path.read_bytes()
        dest = agent.drop / "rich.tar"
        dest.write_bytes(data[: len(data) * 3 // 5])
        wait_until(lambda: agent.quarantined(), 30, f"quarantined\n{agent.log_tail()}")
        q = agent.quarantined()[0]
        assert q["reason"] in ("truncated", "missing-member"), q
        tally.refused += 1
        assert store_blobs(agent.state) == {}
        assert httpx.get(f"http://{agent.registry}/v2/_catalog").json()["repositories"] == []
        agent.drop_file(fault_bundles.rich.path, "rich.tar")
        wait_until(lambda: bundle_states(agent.state).get("rich 1.0.0") == "complete", 30,
                   f"complete\n{agent.log_tail()}")
        tally.converged += 1
    tally.save()


def test_same_bundle_twice_under_two_names(fault_bundles: Bundles, fault_keys: Keys, tmp_path: Path) -> None:
    tally = Tally("transfer: the same bundle twice under two names (second is a no-op)", trials=2, na=("refused",))
    rich = fault_bundles.rich.path
    with AgentProc(tmp_path / "a", [fault_keys.pub]) as agent:
        agent.start()
        agent.drop_file(rich, "first.tar")
        wait_until(lambda: bundle_states(agent.state).get("rich 1.0.0") == "complete", 30, "complete")
        before = sorted(store_blobs(agent.state))
        agent.drop_file(rich, "second.tar")
        wait_until(lambda: "duplicate" in events(agent), 20, f"duplicate\n{agent.log_tail()}")
        assert attempts(agent, "rich 1.0.0") == [1, 1]
        assert sorted(store_blobs(agent.state)) == before and agent.quarantined() == []
        tally.converged += 1
    # both names appear at once (one copy still being handled when the other settles)
    with AgentProc(tmp_path / "b", [fault_keys.pub]) as agent:
        agent.drop.mkdir(parents=True)
        for name in ("x.tar", "y.tar"):
            os.link(rich, agent.drop / name)  # same inode: both appear complete at the same moment
        agent.start()
        wait_until(lambda: "duplicate" in events(agent), 30, f"duplicate\n{agent.log_tail()}")
        assert bundle_states(agent.state) == {"rich 1.0.0": "complete"}
        assert attempts(agent, "rich 1.0.0") == [1, 1] and agent.quarantined() == []
        assert events(agent).count("complete") == 1
        tally.converged += 1
    tally.save()


def test_out_of_order_sequence_is_a_downgrade(fault_bundles: Bundles, fault_keys: Keys, tmp_path: Path) -> None:
    tally = Tally("transfer: out of order (sequence 2, then 1 refused as downgrade)", trials=1)
    with AgentProc(tmp_path / "a", [fault_keys.pub]) as agent:
        agent.start()
        agent.drop_file(fault_bundles.order2.path)
        wait_until(lambda: bundle_states(agent.state).get("order 2.0.0") == "complete", 30, "order 2 complete")
        agent.drop_file(fault_bundles.order1.path)
        wait_until(lambda: agent.quarantined(), 30, f"order 1 refused\n{agent.log_tail()}")
        q = agent.quarantined()[0]
        assert q["reason"] == "downgrade" and q["bundle"]["sequence"] == 1, q
        tally.refused += 1
        assert bundle_states(agent.state) == {"order 2.0.0": "complete", "order 1.0.0": "quarantined"}
        app = fault_bundles.repos[0]
        tags = httpx.get(f"http://{agent.registry}/v2/{app}/tags/list").json()["tags"]
        assert tags == ["2.0"]
        tally.converged += 1
    tally.save()


def test_part_file_never_renamed_is_never_read(fault_bundles: Bundles, fault_keys: Keys, tmp_path: Path) -> None:
    tally = Tally("transfer: a .part that is never renamed (never read)", trials=1, na=("refused",))
    with AgentProc(tmp_path / "a", [fault_keys.pub], incomplete_timeout=1.0) as agent:
        agent.start()
        part = agent.drop / "rich.tar.part"
        part.write_bytes(fault_bundles.rich.path.read_bytes())  # complete content, but never renamed
        os.utime(part, (time.time() - 86400, time.time() - 86400))
        time.sleep(4)  # > settle_seconds, incomplete_timeout and several poll intervals
        assert journal(agent.state, "SELECT COUNT(*) FROM bundles") == [(0,)]
        assert journal(agent.state, "SELECT COUNT(*) FROM drops") == [(0,)]
        assert events(agent) == [] and agent.quarantined() == [] and part.exists()
        tally.converged += 1
    tally.save()
