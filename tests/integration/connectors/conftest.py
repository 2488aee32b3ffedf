"""Fixtures for the connector tests: a batch, and the local stand-ins of outside services.

Every stand-in is labelled as such: the S3 tests run against moto's server, the Snowflake tests
against fakesnow, the Elasticsearch and OpenSearch tests against the small HTTP server in
`es_standin.py` and against two third-party EMULATORS (`noida-db`, `osmem-server`; see
`emulators.py`). Tests against the real services run only when their credentials are set.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipestate.connectors import BatchContext

sys.path.insert(0, str(Path(__file__).parent))  # for es_standin, whatever pytest's import mode

START = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
END = datetime(2026, 1, 1, 11, 0, tzinfo=UTC)


@pytest.fixture
def batch() -> BatchContext:
    """The window [2026-01-01 10:00, 11:00) UTC of pipeline `orders`."""
    return BatchContext.for_window("orders", START, END)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def noida(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """EMULATOR of Elasticsearch 8.15: noida-db's server on 127.0.0.1; yields its URL."""
    pytest.importorskip("noida_db")
    pytest.importorskip("elasticsearch")
    from emulators import start_noida

    with start_noida(tmp_path_factory.mktemp("noida")) as emulator:
        yield emulator.url


@pytest.fixture(scope="session")
def osmem(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """EMULATOR of OpenSearch: osmem-server on 127.0.0.1; yields its URL."""
    pytest.importorskip("osmem_server")
    pytest.importorskip("opensearchpy")
    from emulators import start_osmem

    with start_osmem(tmp_path_factory.mktemp("osmem")) as emulator:
        yield emulator.url


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    """Stand-in for S3: moto's server on 127.0.0.1 and a free port; yields its endpoint URL."""
    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    port = free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
