"""A local fake of the Hugging Face Hub's upload API, as huggingface_hub 2.4.0 calls it without hf_xet.

`HfApi.create_repo` + `upload_folder` (HF_HUB_DISABLE_XET=1: the single-commit path) send, in order:

- POST /api/repos/create                                  {"name", "organization", "visibility"?}
- POST /api/validate-yaml                                 the README.md's metadata (upload_folder checks it first)
- POST /api/models/{repo}/preupload/{revision}            each file's path, size and sample -> "regular" or "lfs"
- POST /{repo}.git/info/lfs/objects/batch                 the LFS files' sha256 and size -> where to PUT them
- PUT  <href of the batch answer>                         an LFS file's bytes (no Authorization: a presigned URL)
- POST <verify href>                                      the LFS upload is checked
- POST /api/models/{repo}/commit/{revision}               NDJSON: a header line, then `file` (base64) and
                                                          `lfsFile` (sha256 of an uploaded object) lines

Besides, huggingface_hub fetches GET /api/agent-harnesses once a day (best effort, without the token, for its
user agent): the fake answers it 404, which the library ignores.

The fake stores each commit's files, so a test sees exactly what arrived. `status` answers every request with
that HTTP status instead (401: a bad token). Anything else is recorded in `unexpected` and answered 404.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

NOT_UPLOADS = ("/api/agent-harnesses",)  # what the library asks besides the upload, answered 404
LFS_SUFFIXES = (".safetensors", ".bin", ".pt")  # what the Hub's .gitattributes sends to LFS


class HubFake:
    def __init__(self) -> None:
        self.repos: dict[str, dict[str, Any]] = {}  # repo id -> {"private": bool|None, "files": {path: bytes}}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> bytes
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Authorization header)
        self.unexpected: list[str] = []
        self.commits: list[dict[str, Any]] = []
        self.status: int | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HubFake:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- the endpoints ------------------------------------------------------------------------

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        if self.status is not None:
            return self.status, {"error": "Invalid credentials in Authorization header"}
        if path in NOT_UPLOADS:
            return 404, {"error": "not part of the upload API"}
        if (method, path) == ("POST", "/api/repos/create"):
            payload = json.loads(body)
            repo_id = "/".join(p for p in (payload.get("organization"), payload["name"]) if p)
            if repo_id in self.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
            self.repos[repo_id] = {"visibility": payload.get("visibility"), "files": {}}
            return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}
        if (method, path) == ("POST", "/api/validate-yaml"):
            content = json.loads(body)["content"]
            match = re.match(r"---\n(.*?)\n---\n", content, re.S)
            if not match or not isinstance(yaml.safe_load(match.group(1)), dict):
                return 400, {"errors": [{"message": "no valid YAML metadata block"}]}
            return 200, {"errors": [], "warnings": []}
        if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/([^/]+)", path):
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": self._mode(f), "shouldIgnore": False}
                                   for f in files]}
        if match := re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path):
            objects = json.loads(body)["objects"]
            return 200, {"transfer": "basic", "objects": [
                {"oid": o["oid"], "size": o["size"],
                 "actions": {"upload": {"href": f"{self.url}/lfs-upload/{o['oid']}"},
                             "verify": {"href": f"{self.url}/lfs-verify"}}} for o in objects]}
        if match := re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", path):
            if method != "PUT" or hashlib.sha256(body).hexdigest() != match.group(1):
                return 400, {"error": "the bytes don't match the oid"}
            self.lfs_objects[match.group(1)] = body
            return 200, {}
        if (method, path) == ("POST", "/lfs-verify"):
            oid = json.loads(body)["oid"]
            return (200, {}) if oid in self.lfs_objects else (404, {"error": f"object {oid} was not uploaded"})
        if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", path):
            return self._commit(match.group(1), body)
        self.unexpected.append(f"{method} {path}")
        return 404, {"error": f"the fake hub has no {method} {path}"}

    def _mode(self, file: dict[str, Any]) -> str:
        binary = b"\0" in base64.b64decode(file["sample"])
        return "lfs" if file["path"].endswith(LFS_SUFFIXES) or binary else "regular"

    def _commit(self, repo_id: str, body: bytes) -> tuple[int, Any]:
        if repo_id not in self.repos:
            return 404, {"error": "Repository not found"}
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header, operations = lines[0], lines[1:]
        files: dict[str, bytes] = {}
        for op in operations:
            value = op["value"]
            if op["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif op["key"] == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    return 400, {"error": f"LFS object {value['oid']} was never uploaded"}
                files[value["path"]] = self.lfs_objects[value["oid"]]
            else:
                return 400, {"error": f"unexpected commit operation {op['key']}"}
        self.repos[repo_id]["files"].update(files)
        self.commits.append({"repo": repo_id, "summary": header["value"]["summary"],
                             "lfs": sorted(op["value"]["path"] for op in operations if op["key"] == "lfsFile")})
        oid = hashlib.sha1(body).hexdigest()
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = b""
                    while size := int(self.rfile.readline().strip(), 16):
                        body += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                else:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                fake.requests.append((self.command, path, self.headers.get("Authorization")))
                status, payload = fake.handle(self.command, path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _serve

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        return Handler
