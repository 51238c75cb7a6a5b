"""Shared fixtures: real registries, file servers, fixture data and a build cache dir.

Support code lives in `tests.support` (import as `from tests.support.images import make_image`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.httpserver import FileServer
from tests.support.registry import Registry

AUTH_USER = "hydra"
AUTH_PASSWORD = "s3cret-pw"
FIXTURES_ENV = "HYDRA_BUNDLE_FIXTURES"


def _need_registry_binary() -> None:
    if shutil.which("docker-registry") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("docker-registry is not installed (apt-get install docker-registry)")
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI=true a test skipped because a tool is missing (`skipif(… reason="X not installed")`) fails:
    .ci/run installs every tool, so a skip there means a setup step is missing."""
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI") == "true" and rep.skipped and "not installed" in str(rep.longrepr):
        rep.outcome = "failed"
        rep.longrepr = f"CI: {rep.longrepr}"


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    """A plain (no auth) registry shared by the whole session; use unique repo names per test."""
    _need_registry_binary()
    with Registry() as reg:
        yield reg


@pytest.fixture(scope="session")
def auth_registry() -> Iterator[Registry]:
    """A session registry with htpasswd basic auth: `hydra` / `s3cret-pw` (see `.auth`)."""
    _need_registry_binary()
    with Registry(AUTH_USER, AUTH_PASSWORD) as reg:
        yield reg


@pytest.fixture
def fresh_registry() -> Iterator[Registry]:
    """An empty plain registry for this test only."""
    _need_registry_binary()
    with Registry() as reg:
        yield reg


@pytest.fixture
def file_server() -> Iterator[Callable[..., FileServer]]:
    """Factory: `file_server(directory, auth=None) -> FileServer`; all are stopped after the test."""
    servers: list[FileServer] = []

    def start(directory: Path | str, auth: tuple[str, str] | None = None) -> FileServer:
        srv = FileServer(directory, auth=auth)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Real fixture data (`$HYDRA_BUNDLE_FIXTURES`); skipped when absent, failed when absent under CI=true."""
    value = os.environ.get(FIXTURES_ENV)
    path = Path(value) if value else None
    if path is None or not path.is_dir():
        why = f"{FIXTURES_ENV} is not set" if value is None else f"{FIXTURES_ENV}={value} is not a directory"
        msg = f"fixture data unavailable: {why} (point {FIXTURES_ENV} at the fixtures directory)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture
def tmp_cache(tmp_path: Path) -> Path:
    """An empty directory for a build cache."""
    cache = tmp_path / "cache"
    cache.mkdir()
    return cache


# ---- apply tests: a real kube-apiserver + etcd and a real MariaDB (tests/support/kube.py, mariadb.py) ----------

def _skip_or_fail(msg: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def kube_binaries() -> tuple[Path, Path]:
    """(kube-apiserver, etcd) from $KUBEBUILDER_ASSETS or the offline recipe's cache; skip (fail in CI) if none."""
    from tests.support.kube import find_binaries

    found = find_binaries()
    if isinstance(found, str):
        _skip_or_fail(found)
    assert not isinstance(found, str)
    return found


@pytest.fixture(scope="session")
def kube_apiserver(kube_binaries: tuple[Path, Path]) -> Iterator[object]:
    """One kube-apiserver + etcd for the session (`.kubeconfig`); tests use unique names and bundle names."""
    from tests.support.kube import KubeAPIServer

    with KubeAPIServer(*kube_binaries) as srv:
        yield srv


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[object]:
    """A private MariaDB for the session (root without password on 127.0.0.1:`.port`)."""
    from tests.support.mariadb import MariaDB, missing_binaries

    why = missing_binaries()
    if why:
        _skip_or_fail(why)
    with MariaDB() as db:
        yield db


@pytest.fixture
def mariadb_factory() -> Iterator[Callable[..., object]]:
    """Factory: `mariadb_factory(start=False)` → a MariaDB of this test (data dir ready, maybe not started)."""
    from tests.support.mariadb import MariaDB, missing_binaries

    why = missing_binaries()
    if why:
        _skip_or_fail(why)
    made: list[MariaDB] = []

    def make(start: bool = True) -> MariaDB:
        db = MariaDB(start=start)
        made.append(db)
        return db

    yield make
    for db in made:
        db.remove()
