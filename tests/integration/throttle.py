"""A TCP proxy on loopback that slows down what a server sends, so a pull can be watched.

    with ThrottledProxy(registry.host, bytes_per_second=1_000_000) as proxy:
        ...  # pull "<proxy.host>/test/big:1": its layers arrive at about 1 MB/s
        proxy.bytes_per_second = None          # full speed from now on

Requests go through unchanged; answers are forwarded in slices of SLICE bytes
with a pause after each to keep to the rate.  Threads in the test process, stopped
(and every connection closed) on exit.
"""
from __future__ import annotations

import socket
import threading
import time

SLICE = 16 * 1024


class ThrottledProxy:
    def __init__(self, upstream: str, bytes_per_second: int | None):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.bytes_per_second = bytes_per_second
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def host(self) -> str:
        return "127.0.0.1:%d" % self._listener.getsockname()[1]

    def __enter__(self) -> "ThrottledProxy":
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc) -> None:
        self._stopped.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        for thread in self._threads:
            thread.join(timeout=10)

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            with self._lock:
                self._sockets.update((client, server))
            self._spawn(self._pipe, client, server, False)
            self._spawn(self._pipe, server, client, True)

    def _pipe(self, source: socket.socket, sink: socket.socket, throttled: bool) -> None:
        try:
            while data := source.recv(SLICE):
                sink.sendall(data)
                rate = self.bytes_per_second
                if throttled and rate:
                    time.sleep(len(data) / rate)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass        # the other side closed, or the proxy is stopping
