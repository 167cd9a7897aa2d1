"""The admin server's thread: waitress (a production WSGI server, pure Python) in `safenest run`.

It runs in a background thread of the agent with a few worker threads of its own, so a slow
page never touches the DNS event loop. Failing to listen (port taken, no privilege for port
80) is logged and DNS goes on: the admin page is never a reason for a family to lose DNS.
"""

from __future__ import annotations

import ipaddress
import logging
import threading

from waitress.server import create_server
from waitress.task import ThreadedTaskDispatcher

log = logging.getLogger(__name__)

DEFAULT_PORT = 80
WORKER_THREADS = 2  # a Pi has few cores and one family: two pages at once is plenty


def parse_admin_listen(text: str) -> tuple[str, int] | None:
    """'0.0.0.0:80', '127.0.0.1:8080', '[::]:80', '192.168.1.2' -> (host, port); '' or 'off'
    -> None (no admin server). ValueError with a message naming the setting otherwise."""
    text = text.strip()
    if text.lower() in ("", "off", "none"):
        return None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.lstrip(":") or str(DEFAULT_PORT)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, str(DEFAULT_PORT)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"admin_listen: bad address in {text!r}: give ADDR:PORT such as 0.0.0.0:80 or "
            "127.0.0.1:8080 ([ADDR]:PORT for IPv6), or 'off'"
        ) from None
    if not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"admin_listen: bad port in {text!r}")
    return host, int(port_text)


class AdminServer:
    """waitress serving `app` on (host, port) in a daemon thread; `stop()` ends it."""

    def __init__(self, app, host: str, port: int):
        # Binds now, so the caller learns at once that the port cannot be had (OSError). Our
        # own socket map and worker pool, so that a failed bind leaves no pipe or thread behind.
        channels: dict = {}
        workers = ThreadedTaskDispatcher()
        workers.set_thread_count(WORKER_THREADS)
        try:
            self._server = create_server(
                app,
                map=channels,
                _dispatcher=workers,
                host=host,
                port=port,
                ident="SafeNest",
                clear_untrusted_proxy_headers=True,  # never believe X-Forwarded-For from the LAN
            )
        except BaseException:
            _close_channels(channels)
            workers.shutdown()
            raise
        self.host = host
        self.port = int(self._server.effective_port)
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="admin-server", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._server.run()
        except Exception:
            if not self._stopping:
                log.exception("the admin server stopped by an error (DNS goes on)")

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listening socket and open connections from the server's own loop, then
        stop its worker threads."""
        if self._stopping:
            return
        self._stopping = True
        server = self._server
        if self._thread is not None and self._thread.is_alive():
            # The asyncore loop is not thread-safe: close everything from inside it.
            server.trigger.pull_trigger(lambda: _close_channels(server._map))
            self._thread.join(timeout)
        else:
            _close_channels(server._map)
        server.task_dispatcher.shutdown()


def _close_channels(channels: dict) -> None:
    for channel in list(channels.values()):
        try:
            channel.close()
        except OSError:
            pass
