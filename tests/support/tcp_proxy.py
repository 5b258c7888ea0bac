"""A small TCP proxy on 127.0.0.1 that a test can cut, to break streams mid-run.

It forwards every connection to a target port in two threads per connection. :meth:`cut`
closes every live connection at once and, for ``refuse_s`` seconds, closes new ones right
after accepting them: a client sees its stream die and its first reconnects fail, as when
a network path flaps or a server restarts. :meth:`stall` stops forwarding without closing
anything, as a network path that drops packets: peers see silence, not errors.
:meth:`allow` ends both. Threads, not the test's event loop, so a cut may be triggered from
a scripted model server's thread while the loop under test is busy.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class TcpProxy:
    """``127.0.0.1:<port>`` → ``127.0.0.1:<target_port>``; :meth:`stop` ends everything."""

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._refuse_until = 0.0
        self._stopping = threading.Event()
        self._flowing = threading.Event()
        self._flowing.set()
        self.cuts = 0
        self.refused = 0
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        port: int = self._listener.getsockname()[1]
        return port

    def stall(self) -> None:
        """Forward nothing more, on live and new connections, until :meth:`allow`."""
        self._flowing.clear()

    def allow(self) -> None:
        """Forward again: end a stall and a refusal."""
        with self._lock:
            self._refuse_until = 0.0
        self._flowing.set()

    def cut(self, refuse_s: float = 0.0) -> None:
        """Close every live connection; refuse new ones for ``refuse_s`` seconds."""
        with self._lock:
            self._refuse_until = time.monotonic() + refuse_s
            live, self._live = self._live, set()
            self.cuts += 1
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def stop(self) -> None:
        """Stop accepting and close every connection."""
        self._stopping.set()
        self._flowing.set()
        self.cut()
        self._thread.join(timeout=5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if time.monotonic() < self._refuse_until:
                self.refused += 1
                client.close()
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._live.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pipe, args=(src, dst), name="tcp-proxy-pipe", daemon=True
                ).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._live.discard(src)
                self._live.discard(dst)
            src.close()
