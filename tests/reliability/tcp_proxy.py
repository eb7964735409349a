"""A TCP proxy on loopback that can cut a database connection around its COMMIT.

It forwards bytes both ways between a client and a PostgreSQL or MariaDB server. Armed
with a mode, it acts on the first COMMIT a connection sends after writing the ledger row
of a replay (so the ledger migration's own commit passes through):

- ``"drop_commit"``: the COMMIT never reaches the server; the connection is cut.
- ``"drop_answer"``: the COMMIT reaches the server, which commits and answers; the
  answer is thrown away and the connection cut, so the client cannot know the outcome.

Armed with ``then_refuse=True``, the proxy also stops accepting connections after the
cut and cuts every other connection, as if the database had gone away.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Literal

Mode = Literal["drop_commit", "drop_answer"]
_CHUNK = 65536


class CuttingProxy:
    """Listen on 127.0.0.1 (an ephemeral port) and forward to ``host:port``."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._mode: Mode | None = None
        self._refuse = False
        self._links: list[_Link] = []
        self.cuts = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, mode: Mode, *, then_refuse: bool = False) -> None:
        """Cut the next replay's COMMIT in ``mode``; refuse connections after if asked."""
        with self._lock:
            self._mode, self._refuse = mode, then_refuse

    def close(self) -> None:
        self._closed = True
        # shutdown first: close() alone leaves the thread blocked in accept() accepting.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()

    def _take(self) -> Mode | None:
        with self._lock:
            mode, self._mode = self._mode, None
            if mode is not None:
                self.cuts += 1
            return mode

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            link = _Link(self, client, server)
            self._links.append(link)
            link.start()


class _Link:
    """One proxied connection: a pump each way."""

    def __init__(self, proxy: CuttingProxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy, self.client, self.server = proxy, client, server
        self.wrote_ledger = False
        self.drop_next_answer = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._upstream, daemon=True).start()
        threading.Thread(target=self._downstream, daemon=True).start()

    def cut(self) -> None:
        if self.proxy._refuse:
            self.proxy._refuse = False
            self.proxy.close()
            for other in self.proxy._links:
                if other is not self:
                    other.cut()
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def _upstream(self) -> None:
        """Client to server: watch for the replay's ledger row, then its COMMIT."""
        try:
            while data := self.client.recv(_CHUNK):
                if b"orm_journal_ledger" in data and b"INSERT" in data:
                    self.wrote_ledger = True
                # psycopg sends COMMIT as a query of its own, pymysql as COM_QUERY.
                if self.wrote_ledger and len(data) < 64 and b"COMMIT" in data:
                    self.wrote_ledger = False
                    mode = self.proxy._take()
                    if mode == "drop_commit":
                        self.cut()
                        return
                    if mode == "drop_answer":
                        self.drop_next_answer.set()
                self.server.sendall(data)
        except OSError:
            pass
        self.cut()

    def _downstream(self) -> None:
        """Server to client: swallow the answer to a COMMIT when asked, then cut."""
        try:
            while data := self.server.recv(_CHUNK):
                if self.drop_next_answer.is_set():
                    break
                self.client.sendall(data)
        except OSError:
            pass
        self.cut()
