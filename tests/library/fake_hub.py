"""A Hugging Face Hub on loopback, for pulling without the internet: just the endpoints
huggingface_hub 2.4 calls to list and download a model's files.

  GET  /api/models/{repo}[/revision/{rev}]   model_info (siblings with size, blobId, lfs.sha256)
  HEAD /{repo}/resolve/{rev}/{file}          get_hf_file_metadata: X-Repo-Commit, ETag,
                                             X-Linked-Etag / X-Linked-Size for LFS files
  GET  /{repo}/resolve/{rev}/{file}          the bytes, honouring `Range: bytes=N-` (206)

Each served file records the ranges asked for and the bytes sent, so tests can prove a resumed
download never fetches a byte twice. A repository can be gated (401 GatedRepo without the right
token), announce a wrong SHA-256, or drop the connection half way through a file once.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LFS_SUFFIXES = (".gguf", ".safetensors", ".pth", ".bin")


@dataclass
class Repo:
    files: dict[str, bytes]
    sha: str = ""
    token: str | None = None  # gated: downloads need `Authorization: Bearer <token>`
    wrong_sha: set[str] = field(default_factory=set)
    drop_once: set[str] = field(default_factory=set)  # send half, then close, the first time

    def __post_init__(self) -> None:
        digest = hashlib.sha1(json.dumps(sorted(self.files)).encode())
        for data in self.files.values():
            digest.update(data)
        self.sha = self.sha or digest.hexdigest()


@dataclass
class Served:
    """One GET of a file: the first byte asked for and the bytes actually sent."""

    start: int
    sent: int


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.served: dict[tuple[str, str], list[Served]] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, repo: str, files: dict[str, bytes | Path], **kw: object) -> Repo:
        data = {k: v.read_bytes() if isinstance(v, Path) else v for k, v in files.items()}
        self.repos[repo] = Repo(data, **kw)  # type: ignore[arg-type]
        return self.repos[repo]

    def bytes_sent(self, repo: str, name: str) -> int:
        return sum(s.sent for s in self.served.get((repo, name), []))

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _lfs_sha(repo: Repo, name: str, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    return ("0" * 64) if name in repo.wrong_sha else digest


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet test output
            pass

        def _json(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(raw)

        def _error(self, status: int, code: str, message: str) -> None:
            self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

        def do_GET(self) -> None:
            match = re.match(r"^/api/models/([^/]+/[^/]+?)(?:/revision/([^/?]+))?(?:\?.*)?$", self.path)
            if match:
                return self._info(match[1])
            return self._resolve()

        def do_HEAD(self) -> None:
            return self._resolve()

        def _info(self, repo_id: str) -> None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
            siblings = []
            for name, data in repo.files.items():
                entry: dict[str, object] = {
                    "rfilename": name,
                    "size": len(data),
                    "blobId": hashlib.sha1(data).hexdigest(),
                }
                if name.endswith(LFS_SUFFIXES):
                    entry["lfs"] = {"sha256": _lfs_sha(repo, name, data), "size": len(data), "pointerSize": 134}
                siblings.append(entry)
            self._json(
                200,
                {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": repo.sha,
                    "private": False,
                    "gated": "manual" if repo.token else False,
                    "siblings": siblings,
                },
            )

        def _resolve(self) -> None:
            match = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+?)(?:\?.*)?$", self.path)
            repo = hub.repos.get(match[1]) if match else None
            if match is None or repo is None:
                return self._error(404, "RepoNotFound", "Repository not found")
            name = match[3]
            if repo.token and self.headers.get("Authorization") != f"Bearer {repo.token}":
                return self._error(
                    401,
                    "GatedRepo",
                    f"Access to model {match[1]} is restricted. "
                    "You must have access to it and be authenticated to access it.",
                )
            if name not in repo.files:
                return self._error(404, "EntryNotFound", f"{name} does not exist")
            data = repo.files[name]
            lfs = name.endswith(LFS_SUFFIXES)
            start = 0
            ranged = re.match(r"^bytes=(\d+)-$", self.headers.get("Range", ""))
            if ranged and self.command == "GET":
                start = int(ranged[1])
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", repo.sha)
            self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
            if lfs:
                self.send_header("X-Linked-Etag", f'"{_lfs_sha(repo, name, data)}"')
                self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if self.command == "HEAD":
                return
            body = data[start:]
            if name in repo.drop_once:
                repo.drop_once.discard(name)
                body = body[: len(body) // 2]  # then the connection closes: a dropped download
            self.wfile.write(body)
            self.wfile.flush()
            hub.served.setdefault((match[1], name), []).append(Served(start, len(body)))
            self.close_connection = True

    return Handler
