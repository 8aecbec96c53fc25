"""The tests' one loopback HTTP server (127.0.0.1 only): files to download, faults to inject, webhooks to
receive."""

from __future__ import annotations

import http.server
import json
import queue
import re
import threading
import time


class FileServer:
    """Serves ``files`` (path -> bytes, mutable) and records every request.

    No content types and no file extensions needed, as Replicate's upload URLs often have none.
    Faults, each settable at any time:

    - ``ranges``: honour ``Range`` (206 + Content-Range, Accept-Ranges: bytes); else 200 with the whole body;
    - ``fail``: answer 500 to that many GETs (``True`` or ``ALWAYS``: to every one);
    - ``drop[path] = (n, times)``: for the next ``times`` GETs of path, announce the full length, send ``n``
      bytes and close (``times=ALWAYS``: a server that always truncates);
    - ``stall[path] = n``: send ``n`` bytes, then wait for ``release`` (at most 10 s; ``close()`` releases);
    - ``delay``: seconds before answering a GET; ``on_request(path)``: called first on each GET;
    - ``handlers[path]``: a function of the request handler that answers that path any way it likes.

    ``requests``: the paths of every GET; ``log``: (method, path, Range header) of every GET and HEAD;
    ``peak``: the most GETs served at once; ``posts``: the JSON bodies POSTed (webhooks), a queue.
    Use as a context manager or call ``close()``.
    """

    ALWAYS = 10**9

    def __init__(self, files: dict[str, bytes] | None = None, *, fail: bool | int = 0, ranges: bool = False):
        self.files = {} if files is None else files
        self.ranges = ranges
        self.fail = self.ALWAYS if fail is True else int(fail)
        self.drop: dict[str, tuple[int, int]] = {}
        self.stall: dict[str, int] = {}
        self.delay = 0.0
        self.on_request = None
        self.handlers: dict = {}
        self.release = threading.Event()
        self.requests: list[str] = []
        self.log: list[tuple[str, str, str | None]] = []
        self.posts: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.active = self.peak = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self):
                outer.log.append(("HEAD", self.path, self.headers.get("Range")))
                body = outer.files.get(self.path)
                if body is None or outer.fail:
                    self.send_error(500 if outer.fail else 404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                if outer.ranges:
                    self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def do_GET(self):
                with outer.lock:
                    outer.requests.append(self.path)
                    outer.log.append(("GET", self.path, self.headers.get("Range")))
                    outer.active += 1
                    outer.peak = max(outer.peak, outer.active)
                try:
                    special = outer.handlers.get(self.path)
                    if special is not None:
                        special(self)
                    else:
                        self._get()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with outer.lock:
                        outer.active -= 1

            def do_POST(self):
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    outer.posts.put(json.loads(data))
                except ValueError:
                    outer.posts.put({"raw": data})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _get(self):
                if outer.on_request is not None:
                    outer.on_request(self.path)
                if outer.delay:
                    time.sleep(outer.delay)
                body = outer.files.get(self.path)
                with outer.lock:
                    failing = outer.fail > 0
                    if failing:
                        outer.fail -= 1
                if failing or body is None:
                    self.send_error(500 if failing else 404)
                    return
                start, end = 0, len(body)
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
                if outer.ranges and m:
                    start = int(m[1])
                    end = min(int(m[2]) + 1, len(body)) if m[2] else len(body)
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if outer.ranges:
                    self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start))
                self.end_headers()
                part = body[start:end]
                with outer.lock:
                    cut, times = outer.drop.get(self.path, (None, 0))
                    if times > 0:
                        outer.drop[self.path] = (cut, times - 1)
                    else:
                        cut = None
                if cut is not None:
                    self.wfile.write(part[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if self.path in outer.stall:
                    self.wfile.write(part[: outer.stall[self.path]])
                    self.wfile.flush()
                    outer.release.wait(10)
                    return
                self.wfile.write(part)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True  # a stalled answer never holds up close()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def gets(self, path: str | None = None) -> list[tuple[str, str, str | None]]:
        """The GETs (method, path, Range header), of ``path`` or of all."""
        return [r for r in self.log if r[0] == "GET" and (path is None or r[1] == path)]

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "FileServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
