"""A Hugging Face Hub on the loopback interface, for download tests without the network.

It answers the three requests ``huggingface_hub`` makes for a download, in the Hub's URL
layout: ``GET /api/models/<repo>/revision/<rev>?blobs=true`` (the commit and every file's size,
git blob id and, for large files, LFS SHA256), ``HEAD /<repo>/resolve/<rev>/<path>`` (commit,
etag, size) and ``GET`` of the same address, with HTTP ranges. ``HF_ENDPOINT`` = :attr:`FakeHub.url`
points a client at it.

Faults to test against: :meth:`FakeHub.cut` ends a file's next response after some bytes
(and can refuse the following requests, as a network that stays down would);
:meth:`FakeHub.corrupt` serves other bytes than the published checksum says.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

LFS_FROM = 1024          # files this large or larger are "LFS" files (as .safetensors on the Hub)


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str             # what "main" resolves to


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


class FakeHub:
    """``with FakeHub({"owner/name": {"path": b"bytes"}}) as hub: ...`` serves the repositories;
    ``commits`` gives a repository's commit (a made-up one otherwise)."""

    def __init__(self, repos: dict[str, dict[str, bytes]], commits: dict[str, str] | None = None):
        commits = commits or {}
        self.repos = {name: Repo(dict(files), commits.get(name) or hashlib.sha1(name.encode()).hexdigest())
                      for name, files in repos.items()}
        self.requests: list[tuple[str, str, str | None]] = []     # (method, path, Range header)
        self._cuts: dict[str, tuple[int, int]] = {}              # path -> (bytes sent, refusals after)
        self._refusals: dict[str, int] = {}                      # path -> GETs still refused
        self._corrupt: set[str] = set()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):        # keep the test output clean
                pass

            def do_GET(self):
                hub._answer(self, body=True)

            def do_HEAD(self):
                hub._answer(self, body=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- faults ---------------------------------------------------------------------------

    def cut(self, path: str, after: int, refuse: int = 0) -> None:
        """The next GET of ``path`` stops after ``after`` bytes; the ``refuse`` requests after it get 503."""
        self._cuts[path] = (after, refuse)

    def corrupt(self, path: str) -> None:
        """Serve ``path`` with its first byte changed (the published checksum stays the true one)."""
        self._corrupt.add(path)

    # -- serving --------------------------------------------------------------------------

    def __enter__(self) -> "FakeHub":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def gets(self, path: str) -> list[str | None]:
        """The Range headers of the GETs of a file, in order (None: the whole file)."""
        return [rng for method, p, rng in self.requests if method == "GET" and p.endswith("/" + path)]

    def _find(self, parts: list[str]) -> tuple[Repo, str] | None:
        """The repository and revision of ``<owner>/<name>/.../<rev>`` addresses."""
        if len(parts) < 2 or "/".join(parts[:2]) not in self.repos:
            return None
        return self.repos["/".join(parts[:2])], "/".join(parts[:2])

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        url = urlparse(handler.path)
        path = unquote(url.path)
        self.requests.append((handler.command, path, handler.headers.get("Range")))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"]:
            return self._info(handler, parts[2:])
        found = self._find(parts)
        if found is None or len(parts) < 5 or parts[2] != "resolve":
            return self._error(handler, 404, "RepoNotFound")
        repo, _ = found
        if parts[3] not in ("main", repo.commit):
            return self._error(handler, 404, "RevisionNotFound")
        name = "/".join(parts[4:])
        if name not in repo.files:
            return self._error(handler, 404, "EntryNotFound", repo.commit)
        self._send_file(handler, repo, name, body)

    def _info(self, handler, parts: list[str]) -> None:
        found = self._find(parts)
        if found is None or len(parts) != 4 or parts[2] != "revision":
            return self._error(handler, 404, "RepoNotFound")
        repo, name = found
        if parts[3] not in ("main", repo.commit):
            return self._error(handler, 404, "RevisionNotFound")
        siblings = []
        for path, data in sorted(repo.files.items()):
            sibling = {"rfilename": path, "size": len(data), "blobId": git_blob_id(data)}
            if len(data) >= LFS_FROM:
                sibling["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
            siblings.append(sibling)
        payload = json.dumps({"id": name, "modelId": name, "sha": repo.commit, "private": False,
                              "siblings": siblings}).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _error(self, handler, status: int, code: str, commit: str | None = None) -> None:
        payload = json.dumps({"error": code}).encode()
        handler.send_response(status)
        handler.send_header("X-Error-Code", code)
        if commit:
            handler.send_header("X-Repo-Commit", commit)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _send_file(self, handler, repo: Repo, name: str, body: bool) -> None:
        data = repo.files[name]
        lfs = len(data) >= LFS_FROM
        etag = hashlib.sha256(data).hexdigest() if lfs else git_blob_id(data)
        if name in self._corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        if body and self._refusals.get(name):                   # the network stays down
            self._refusals[name] -= 1
            return self._error(handler, 503, "Unavailable")
        start = 0
        rng = handler.headers.get("Range")
        if rng and body:
            start = int(rng.split("=")[1].split("-")[0])
        chunk = data[start:]
        handler.send_response(206 if start else 200)
        handler.send_header("X-Repo-Commit", repo.commit)
        handler.send_header("ETag", f'"{etag}"')
        if lfs:
            handler.send_header("X-Linked-Etag", f'"{etag}"')
            handler.send_header("X-Linked-Size", str(len(data)))
        handler.send_header("Accept-Ranges", "bytes")
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.send_header("Content-Length", str(len(chunk)))
        handler.end_headers()
        if not body:
            return
        if name in self._cuts:
            after, refuse = self._cuts.pop(name)
            handler.wfile.write(chunk[:after])
            handler.wfile.flush()
            handler.close_connection = True
            self._refusals[name] = refuse
            return
        handler.wfile.write(chunk)
