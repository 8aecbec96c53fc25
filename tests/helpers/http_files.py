"""A loopback HTTP server over a dict of path -> bytes, for download tests (127.0.0.1 only)."""

from __future__ import annotations

import http.server
import threading


class FileServer:
    """Serves ``files`` (mutable) on 127.0.0.1; records each GET path; ``fail=True`` answers 500 to all;
    ``handlers[path]`` (a function of the request handler) answers that path any way it likes.

    No content types and no file extensions needed, as Replicate's upload URLs often have none.
    Use as a context manager or call ``close()``.
    """

    def __init__(self, files: dict[str, bytes] | None = None, fail: bool = False):
        self.files = {} if files is None else files
        self.fail, self.requests = fail, []
        self.handlers: dict = {}  # path -> handler(request_handler): answers that path itself (stall, loop, ...)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                special = outer.handlers.get(self.path)
                if special is not None:
                    try:
                        special(self)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                body = outer.files.get(self.path)
                if outer.fail or body is None:
                    self.send_error(500 if outer.fail else 404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True  # a stalled answer never holds up close()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "FileServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
