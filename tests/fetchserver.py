"""A loopback HTTP server for tests/test_fetch.py: files at the official paths (Apple, OpenMMLab),
the Hugging Face Hub's resolve endpoint, and the failures a real network has (a dropped
connection, redirects, a server that never answers, a response without a length).

The Hub part answers what ``hf_hub_download`` asks: ``HEAD`` and ``GET``
``/{repo}/resolve/{revision}/{file}``, with ``X-Repo-Commit`` and ``ETag`` (for a large file, its
sha256 in quotes, as the Hub does), and ``X-Error-Code: EntryNotFound`` for a missing file.
"""
from __future__ import annotations

import hashlib
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple

APPLE = "/ml-research/datasets/mobileone/"
MMPRETRAIN = "/mmclassification/v0/mobileone/"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FetchServer:
    """Routes set by the test; ``log`` holds (method, path, Range, If-Range) of each request."""

    def __init__(self) -> None:
        self.files: Dict[str, bytes] = {}
        self.etags: Dict[str, str] = {}  # path -> ETag sent instead of the bytes' sha256
        self.redirects: Dict[str, str] = {}
        self.drops: Dict[str, List[int]] = {}  # path -> bytes sent before closing, per GET
        self.hang: set = set()
        self.no_length: set = set()
        self.hub_paths: set = set()
        self.log: List[Tuple[str, str, Optional[str], Optional[str]]] = []
        self.stop = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        # a short poll: shutdown() waits for the serving loop to look, at every test's end
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,),
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def hub_file(self, repo: str, file: str, data: bytes, revision: str = "main") -> str:
        path = f"/{repo}/resolve/{revision}/{file}"
        self.files[path] = data
        self.hub_paths.add(path)
        return path

    def gets(self, path: str) -> List[Tuple[Optional[str], Optional[str]]]:
        return [(r, i) for m, p, r, i in self.log if m == "GET" and p == path]

    def __enter__(self) -> "FetchServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(server: FetchServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._answer(head=True)

        def do_GET(self) -> None:
            self._answer(head=False)

        def _answer(self, head: bool) -> None:
            path = self.path.split("?", 1)[0]
            server.log.append((self.command, path, self.headers.get("Range"),
                               self.headers.get("If-Range")))
            if path in server.hang:
                server.stop.wait(30)
                return
            if path in server.redirects:
                self.send_response(302)
                self.send_header("Location", server.redirects[path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = server.files.get(path)
            hub = path in server.hub_paths or "/resolve/" in path
            if data is None:
                self.send_response(404)
                if hub:
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            etag = server.etags.get(path, hashlib.sha256(data).hexdigest())
            quoted = f'"{etag}"'
            start, status = 0, 200
            wanted = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if not head and wanted and (if_range is None or if_range == quoted):
                m = re.match(r"^bytes=(\d+)-$", wanted)
                if m and int(m.group(1)) < len(data):
                    start, status = int(m.group(1)), 206
            body = data[start:]
            self.send_response(status)
            self.send_header("ETag", quoted)
            self.send_header("Accept-Ranges", "bytes")
            if hub:
                self.send_header("X-Repo-Commit", COMMIT)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            if path not in server.no_length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if head:
                return
            drops = server.drops.get(path)
            if drops:
                self.wfile.write(body[:drops.pop(0)])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

    return Handler
