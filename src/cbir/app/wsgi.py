"""The production WSGI server behind ``cbir serve``: waitress, with a fixed thread pool, a connection cap and a
total deadline per request.

waitress reads every request (headers and body) on one asynchronous main thread and hands only a *complete*
request to its fixed pool of worker threads, so a slow client never holds a thread. On top of waitress's own
limits this module adds what it lacks:

* a **total deadline** per request: a request must arrive whole within ``deadline_s`` of its first byte
  (else ``408`` and the connection is closed: a client sending one byte a second is dropped, and so is one
  that stalls: waitress's own idle cut-off comes later, so the ``408`` is sent first), and its reply must
  be sent within ``deadline_s`` of being ready (else the connection is closed); an idle connection between
  requests is closed after ``2 x deadline_s``;
* a request whose client **closes its side early** (a body shorter than its ``Content-Length``, then a
  half-close) is answered ``400`` saying so, then closed, instead of being dropped without a reply;
* **sockets closed after an error reply**: every ``4xx`` and ``5xx`` reply (the app's, and waitress's own
  refusals) says ``Connection: close`` and closes the connection once sent;
* waitress's own refusals (a body over the upload limit, oversized headers, a malformed request line) are
  **one line** (JSON ``{"error": ...}`` under ``/api/``), not waitress's multi-line page.

Limits (:data:`THREADS`, :data:`CONNECTION_LIMIT`, :data:`MAX_HEADER_BYTES`) are constants: the process runs
at most ``THREADS`` request threads plus waitress's main thread, whatever the number of clients; beyond
``CONNECTION_LIMIT`` open connections new ones wait in the listen backlog until others close.
"""

from __future__ import annotations

import json
import math
import threading
import time

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher, WSGITask
from waitress.utilities import RequestEntityTooLarge

#: worker threads running the app (each request that arrived whole); queries compute in at most
#: ``serve.max_concurrent`` of them at once (the app's gate), the others answer pages and thumbnails
THREADS = 8
#: open connections at most; beyond it the server stops accepting until some close
CONNECTION_LIMIT = 512
#: request line and headers, at most
MAX_HEADER_BYTES = 64 * 1024
#: a multipart body may exceed the upload limit by this much (boundaries, the method field) before waitress
#: refuses it unread; between the two, the app's own message answers
BODY_MARGIN_BYTES = 1024 * 1024


class _ClosingTask(WSGITask):
    """The app's reply; an error reply (``4xx``, ``5xx``) says ``Connection: close`` and closes the socket once
    sent (an app may not set that hop-by-hop header itself, PEP 3333)."""

    def build_response_header(self):
        if str(self.status)[:1] in ("4", "5"):
            self.set_close_on_finish()
        return super().build_response_header()


class _OneLineErrorTask(ErrorTask):
    """waitress's own refusals (before the app runs) as one line, then the socket closes."""

    def execute(self):
        error, server = self.request.error, self.channel.server
        if isinstance(error, RequestEntityTooLarge):
            message = (f"the upload is larger than the {server.max_upload_bytes / 2 ** 20:.3g} MB limit: "
                       "choose a smaller image")
        else:
            message = f"the request was refused: {error.reason.lower()} ({' '.join(str(error.body).split())})"
        self.status = f"{error.code} {error.reason}"
        body = _error_body(message, getattr(self.request, "path", "") or "")
        self.response_headers.append(("Content-Type", "application/json" if body.startswith(b"{") else
                                      "text/plain; charset=utf-8"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


def _error_body(message: str, path: str) -> bytes:
    if path.startswith("/api/"):
        return (json.dumps({"error": message}) + "\n").encode()
    return f"error: {message}\n".encode()


class DeadlineChannel(HTTPChannel):
    """A connection whose requests have a total deadline (see the module docstring)."""

    task_class = _ClosingTask
    error_task_class = _OneLineErrorTask
    request_started: float | None = None  # monotonic time of the current request's first byte
    reply_ready: float | None = None  # monotonic time the last reply was handed to the socket
    refused_at: float | None = None

    def received(self, data):
        before = self.request
        result = super().received(data)
        if self.request is not None and self.request is not before:
            self.request_started = time.monotonic()  # a new request began in this chunk
        return result

    def service(self):
        try:
            super().service()
        finally:
            self.reply_ready = time.monotonic()

    def recv(self, buffer_size):
        """waitress's ``recv``, except that the end of the client's data in the middle of a request (it sent
        less than its ``Content-Length``, then closed its side) is answered ``400``, not dropped silently."""
        try:
            data = self.socket.recv(buffer_size)
        except OSError as why:
            if why.args[0] in wasyncore._DISCONNECTED:
                self.handle_close()
                return b""
            raise
        if data:
            return data
        if self.request is not None and self.refused_at is None and not self.close_when_flushed:
            self.refuse("400 Bad Request", "the request ended before all of it arrived (the client closed its "
                                           "side before sending its Content-Length): send it again, whole")
            return b""
        self.handle_close()
        return b""

    def refuse_late(self, deadline_s: float) -> None:
        """Answer ``408`` to a request that has not arrived whole in time, then close."""
        self.refuse("408 Request Timeout", f"the request did not arrive within the {deadline_s:g} s limit "
                                           "(serve.request_timeout_s): send it again, faster")

    def refuse(self, status: str, message: str) -> None:
        """Answer the request being read with ``status`` and one line, then close once it is sent."""
        path = getattr(self.request, "path", None) if self.request is not None else None
        body = _error_body(message, path or "")
        head = (f"HTTP/1.1 {status}\r\nContent-Type: "
                + ("application/json" if body.startswith(b"{") else "text/plain; charset=utf-8")
                + f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("ascii")
        with self.outbuf_lock:
            self.outbufs[-1].append(head + body)
            self.total_outbufs_len += len(head) + len(body)
            self.current_outbuf_count += len(head) + len(body)
        self.request = None
        self.close_when_flushed = True
        self.refused_at = time.monotonic()


class BoundedServer(TcpWSGIServer):
    """waitress's TCP server with :class:`DeadlineChannel` connections, stoppable from another thread
    (:meth:`serve_forever`, :meth:`shutdown`, :meth:`server_close`, ``server_port``: as the standard library's)."""

    channel_class = DeadlineChannel

    def __init__(self, app, host: str, port: int, deadline_s: float, max_upload_bytes: int):
        self.deadline_s, self.max_upload_bytes = float(deadline_s), int(max_upload_bytes)
        adj = Adjustments(host=host, port=port, threads=THREADS, connection_limit=CONNECTION_LIMIT,
                          channel_timeout=max(2, math.ceil(2 * self.deadline_s)), cleanup_interval=1,
                          max_request_header_size=MAX_HEADER_BYTES,
                          max_request_body_size=self.max_upload_bytes + BODY_MARGIN_BYTES,
                          asyncore_use_poll=True, ident="cbir", expose_tracebacks=False)
        dispatcher = ThreadedTaskDispatcher()
        dispatcher.set_thread_count(adj.threads)
        self._stop, self._stopped = threading.Event(), threading.Event()
        self._stopped.set()
        try:
            super().__init__(app, map={}, dispatcher=dispatcher, adj=adj, sockinfo=adj.listen[0])
        except BaseException:
            dispatcher.shutdown(timeout=1)
            for part in (getattr(self, "trigger", None), getattr(self, "socket", None)):
                if part is not None:
                    part.close()
            raise

    @property
    def server_port(self) -> int:
        return int(self.effective_port)

    def maintenance(self, now):
        """waitress's idle cut-off, then the total deadline of every connection (see the module docstring)."""
        super().maintenance(now)
        clock, limit = time.monotonic(), self.deadline_s
        for channel in list(self.active_channels.values()):
            if channel.requests or channel.will_close:
                continue  # the app is answering it (the app's own time limit applies)
            if channel.refused_at is not None:
                if clock - channel.refused_at > limit:  # the 408 itself could not be sent
                    channel.will_close = True
            elif channel.request is not None and not channel.close_when_flushed and \
                    channel.request_started is not None and clock - channel.request_started > limit:
                channel.refuse_late(limit)
            elif channel.total_outbufs_len and channel.reply_ready is not None and clock - channel.reply_ready > limit:
                channel.will_close = True  # a client that does not read its reply

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` (from another thread) or Ctrl-C."""
        self._stop.clear()
        self._stopped.clear()
        try:
            while not self._stop.is_set() and self._map:
                wasyncore.loop(timeout=self.adj.asyncore_loop_timeout, map=self._map, use_poll=True, count=1)
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` and wait for it to return."""
        self._stop.set()
        try:
            self.pull_trigger()
        except OSError:
            pass
        self._stopped.wait(timeout=10)

    def server_close(self) -> None:
        """Close the listening socket and every connection; stop the worker threads."""
        for channel in list(self._map.values()):
            try:
                channel.close()
            except OSError:
                pass
        self.task_dispatcher.shutdown(timeout=5)
