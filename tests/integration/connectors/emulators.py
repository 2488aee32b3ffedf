"""Third-party EMULATORS of Elasticsearch and OpenSearch, started on 127.0.0.1 for the tests and bench.

- `noida-db` (PyPI, 0.2.3): emulates Elasticsearch 8.15; its bundled binary is run as
  `noida-db start --only elasticsearch --elasticsearch-port P --host 127.0.0.1 --data-dir D`.
- `osmem-server` (PyPI, 0.1.6): emulates OpenSearch 3.x, in memory; its bundled binary is run as
  `osmem-server --addr 127.0.0.1:P --no-stdin-watch`.
Both are real HTTP servers with implementations of their own, which pipestate did not write:
they check our reading of the APIs, but they are emulators, not the engines themselves.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Emulator", "free_port", "start_noida", "start_osmem"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Emulator:
    """A running emulator: its name, URL and process; `stop()` ends that process."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _start(name: str, command: list[str], port: int, workdir: Path) -> Emulator:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=workdir
        )
    emulator = Emulator(name, f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(emulator.url + "/", timeout=2) as answer:
                if answer.status == 200:
                    return emulator
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    emulator.stop()
    raise RuntimeError(f"{name} did not answer on {emulator.url} within 60s: {log.read_text()[-2000:]}")


def start_noida(workdir: Path | None = None) -> Emulator:
    """The Elasticsearch emulator `noida-db` on a free port, with a fresh data directory."""
    from importlib.resources import files

    binary = Path(str(files("noida_db").joinpath("noida-db.exe" if os.name == "nt" else "noida-db")))
    binary.chmod(0o755)
    workdir = workdir or Path(tempfile.mkdtemp(prefix="pipestate-noida-"))
    port = free_port()
    command = [str(binary), "start", "--only", "elasticsearch", "--elasticsearch-port", str(port)]
    command += ["--host", "127.0.0.1", "--data-dir", str(workdir / "data")]
    return _start("noida-db", command, port, workdir)


def start_osmem(workdir: Path | None = None) -> Emulator:
    """The OpenSearch emulator `osmem-server` on a free port."""
    from osmem_server import resolve_binary

    workdir = workdir or Path(tempfile.mkdtemp(prefix="pipestate-osmem-"))
    port = free_port()
    command = [resolve_binary(), "--addr", f"127.0.0.1:{port}", "--no-stdin-watch", "--no-ja"]
    command += ["--parent-pid", str(os.getpid())]  # gone with the test run, however it ends
    return _start("osmem-server", command, port, workdir)
