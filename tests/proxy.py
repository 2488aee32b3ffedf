"""A TCP proxy the tests can freeze: a network that stops answering, without
touching the PostgreSQL server other tests (and teams) share.

    with FreezableProxy(5432) as proxy:
        url = f"postgresql+psycopg://root@127.0.0.1:{proxy.port}/test"
        ...
        proxy.freeze()   # connections stay open; nothing more is passed on
        proxy.thaw()

Frozen, the proxy keeps every socket open and accepts new connections, but
passes no byte either way: what a stopped process, a hung NAT or a silent
firewall looks like to the client (its kernel still acknowledges the bytes).
Only ever forwards to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from types import TracebackType


class FreezableProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", port: int = 0) -> None:
        if target_host not in ("127.0.0.1", "localhost"):
            raise ValueError("the test proxy forwards to 127.0.0.1 only")
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port: int = self.listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = [self.listener]
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._accept, daemon=True, name="proxy-accept")]
        self._threads[0].start()

    # -- control --------------------------------------------------------------

    def freeze(self) -> None:
        """Stop passing bytes (both ways, every connection, new ones too)."""
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def __enter__(self) -> FreezableProxy:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the forwarding -------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            thread = threading.Thread(
                target=self._pump, args=(client, upstream), daemon=True, name="proxy-pump"
            )
            thread.start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as selector:
            for sock in peers:
                selector.register(sock, selectors.EVENT_READ)
            while not self._closed.is_set():
                # Frozen: read nothing, so the bytes wait in the kernel's buffers.
                self._flowing.wait()
                if self._closed.is_set():
                    return
                for key, _ in selector.select(timeout=0.1):
                    if not self._flowing.is_set():
                        break
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        data = sock.recv(65536)
                        if not data:
                            raise OSError("closed")
                        peers[sock].sendall(data)
                    except OSError:
                        for each in peers:
                            each.close()
                        return
