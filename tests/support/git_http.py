"""A real git smart-HTTP remote on 127.0.0.1: ``git http-backend`` behind basic auth.

Each request runs ``git http-backend`` as a CGI program, as a forge's web server would.
Only ``username:token`` is let in. While an authenticated request is being served, the git
client that sent it is still running (waiting for the answer), so the server takes that
moment to read every process's command line from ``/proc``: the proof that the token is
in no argv.
"""

from __future__ import annotations

import base64
import subprocess
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

GIT_BACKEND_TIMEOUT_S = 60


def process_cmdlines() -> list[str]:
    """The command line of every process visible in ``/proc`` (NULs as spaces)."""
    lines = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:  # the process ended meanwhile
            continue
        if raw:
            lines.append(raw.replace(b"\0", b" ").decode(errors="replace").strip())
    return lines


class _Handler(BaseHTTPRequestHandler):
    server: GitHttpServer._Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib's name
        """Quiet: tests read :attr:`GitHttpServer.requests` instead."""

    def do_GET(self) -> None:
        """Ref advertisement (``info/refs``)."""
        self._serve()

    def do_POST(self) -> None:
        """``git-upload-pack`` / ``git-receive-pack`` exchanges."""
        self._serve()

    def _authorized(self) -> bool:
        expected = base64.b64encode(f"{self.server.username}:{self.server.token}".encode()).decode()
        return self.headers.get("Authorization", "") == f"Basic {expected}"

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        self.server.authorization_headers.append(self.headers.get("Authorization", ""))
        if self.server.redirect_to:
            self.send_response(HTTPStatus.FOUND)
            self.send_header("Location", self.server.redirect_to + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        authorized = self._authorized()
        self.server.requests.append((self.command, self.path, authorized))
        if not authorized:
            self.send_response(HTTPStatus.UNAUTHORIZED)
            self.send_header("WWW-Authenticate", 'Basic realm="forgeline-test"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.server.cmdline_snapshots.append(process_cmdlines())
        body = self._body()
        url = urlsplit(self.path)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.server.root),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_PROJECT_ROOT": str(self.server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": url.path,
            "QUERY_STRING": url.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": self.server.username,  # enables receive-pack (pushes)
            "REMOTE_ADDR": self.client_address[0],
        }
        for header, var in (
            ("Git-Protocol", "GIT_PROTOCOL"),
            ("Content-Encoding", "HTTP_CONTENT_ENCODING"),
        ):
            if self.headers.get(header):
                env[var] = self.headers[header]
        done = subprocess.run(
            ["git", "http-backend"],
            input=body,
            capture_output=True,
            env=env,
            timeout=GIT_BACKEND_TIMEOUT_S,
            check=False,
        )
        head, sep, payload = done.stdout.partition(b"\r\n\r\n")
        if not sep:
            head, _, payload = done.stdout.partition(b"\n\n")
        status = HTTPStatus.OK
        headers = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = HTTPStatus(int(value.strip().split()[0]))
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class GitHttpServer:
    """Serves the bare repositories under ``root`` at ``http://127.0.0.1:<port>/<name>``."""

    class _Server(ThreadingHTTPServer):
        daemon_threads = True
        root: Path
        username: str
        token: str
        requests: list[tuple[str, str, bool]]
        cmdline_snapshots: list[list[str]]
        authorization_headers: list[str]
        redirect_to: str | None

    def __init__(
        self, root: Path, *, username: str, token: str, redirect_to: str | None = None
    ) -> None:
        """Serve ``root``; with ``redirect_to`` (a base URL), answer every request with a
        302 to the same path there instead."""
        self._server = self._Server(("127.0.0.1", 0), _Handler)
        self._server.root = root
        self._server.username = username
        self._server.token = token
        self._server.requests = []
        self._server.cmdline_snapshots = []
        self._server.authorization_headers = []
        self._server.redirect_to = redirect_to
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="git-http-server",
            daemon=True,
        )

    @property
    def port(self) -> int:
        """The port bound on 127.0.0.1."""
        return int(self._server.server_address[1])

    def url(self, name: str) -> str:
        """The URL of repository ``name`` (a directory under ``root``)."""
        return f"http://127.0.0.1:{self.port}/{name}"

    @property
    def requests(self) -> list[tuple[str, str, bool]]:
        """``(method, path, authorized)`` of every request so far."""
        return self._server.requests

    @property
    def authorization_headers(self) -> list[str]:
        """The ``Authorization`` header of every request ("" when absent)."""
        return self._server.authorization_headers

    @property
    def cmdline_snapshots(self) -> list[list[str]]:
        """Every process's command line, read during each authorized request."""
        return self._server.cmdline_snapshots

    def __enter__(self) -> GitHttpServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
