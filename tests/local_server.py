"""A throwaway HTTP server on 127.0.0.1 for the download tests: it serves bytes from memory and counts requests.

>>> with serving() as server:
...     server.files["/a.bin"] = b"hello"
...     urllib.request.urlopen(server.url + "a.bin").read()   # server.requests == ["/a.bin"]
"""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class LocalServer:
    """What the running server serves and what it was asked for.

    Attributes:
        url: the base URL, ``http://127.0.0.1:<port>/``.
        files: URL path (``"/name"``) -> the bytes served there; any other path is a 404.
        short: URL paths whose response announces its full ``Content-Length`` but stops halfway (a dropped transfer).
        stalled: URL paths whose response announces its full length, sends the first 1 KiB and then nothing more,
            keeping the connection open until the server stops (a server that hangs mid-transfer).
        silent: URL paths whose request is accepted and never answered until the server stops (no headers).
        requests: the paths of every GET received, in order.
    """

    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    short: set[str] = field(default_factory=set)
    stalled: set[str] = field(default_factory=set)
    silent: set[str] = field(default_factory=set)
    requests: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)


@contextlib.contextmanager
def serving() -> Iterator[LocalServer]:
    """Run a :class:`LocalServer` on a free port in a background thread; stopped and closed on exit."""
    state = LocalServer()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the name http.server dispatches to)
            state.requests.append(self.path)
            if self.path in state.silent:
                state.stopping.wait(60)
                return
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.path in state.stalled:
                self.wfile.write(body[:1024])
                self.wfile.flush()
                state.stopping.wait(60)  # hold the connection open, sending nothing, until the server stops
                return
            self.wfile.write(body[:len(body) // 2] if self.path in state.short else body)

        def log_message(self, *args) -> None:  # keep test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stopping.set()  # release stalled and silent handlers, so that closing does not wait for them
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens: connecting is refused at once, as on a machine offline."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"
