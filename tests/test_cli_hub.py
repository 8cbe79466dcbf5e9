"""A fake Hugging Face Hub for ``sae-lens upload`` tests: only the network is replaced.

``FakeHub`` is an ``httpx2`` transport installed with huggingface_hub's own
``set_client_factory``: every request huggingface_hub makes (repo_info,
create_repo, preupload, commit, HEAD/GET of resolve URLs) is answered from
memory, so upstream's ``upload_saes_to_huggingface``, huggingface_hub's
commit code and its download/cache code all run unchanged. The test then
loads the SAE in a fresh, offline process from the cache that
``hf_hub_download`` wrote (``tests/test_cli_train.py``, which shares the demo run).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

REPO_ID = "someone/demo-saes"
SAE_ID = "fo-synthetic"


class FakeHub:
    """The Hub's HTTP API, in memory, for one model repo; records what it was sent."""

    def __init__(self, record: Path) -> None:
        self.record = record
        state = json.loads(record.read_text()) if record.exists() else {}
        self.repos: dict[str, dict[str, str]] = state.get("repos", {})
        self.commits: list[dict[str, Any]] = state.get("commits", [])
        self.requests: list[str] = state.get("requests", [])

    def _save(self) -> None:
        self.record.write_text(
            json.dumps({"repos": self.repos, "commits": self.commits, "requests": self.requests})
        )

    def _sha(self, repo: str) -> str:
        return hashlib.sha1(json.dumps(sorted(self.repos[repo].items())).encode()).hexdigest()

    def handle(self, request: Any) -> Any:
        import httpx2

        method, path = request.method, request.url.path
        self.requests.append(f"{method} {path}")
        try:
            return self._route(httpx2, request, method, path)
        finally:
            self._save()

    def _route(self, httpx2: Any, request: Any, method: str, path: str) -> Any:
        def error(code: str, status: int = 404) -> Any:
            return httpx2.Response(
                status, headers={"X-Error-Code": code}, json={"error": code}, request=request
            )

        parts = path.strip("/").split("/")
        if path == "/api/validate-yaml" and method == "POST":  # README metadata check
            return httpx2.Response(200, json={"errors": [], "warnings": []}, request=request)
        if parts[:2] == ["api", "repos"] and parts[2] == "create" and method == "POST":
            body = json.loads(request.content)
            repo = (
                f"{body['organization']}/{body['name']}"
                if body.get("organization")
                else body["name"]
            )
            self.repos.setdefault(repo, {})
            return httpx2.Response(
                200, json={"url": f"https://huggingface.co/{repo}", "name": repo}, request=request
            )
        if parts[:2] == ["api", "models"]:
            repo = "/".join(parts[2:4])
            rest = parts[4:]
            if repo not in self.repos:
                return error("RepoNotFound")
            if not rest or rest[0] == "revision":
                return httpx2.Response(
                    200,
                    request=request,
                    json={
                        "id": repo,
                        "sha": self._sha(repo),
                        "private": False,
                        "siblings": [{"rfilename": f} for f in sorted(self.repos[repo])],
                    },
                )
            if rest[0] == "preupload":
                files = json.loads(request.content)["files"]
                return httpx2.Response(
                    200,
                    request=request,
                    json={
                        "files": [
                            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                            for f in files
                        ]
                    },
                )
            if rest[0] == "commit":
                lines = [json.loads(x) for x in request.content.decode().splitlines() if x]
                header = next(x["value"] for x in lines if x["key"] == "header")
                files = {
                    x["value"]["path"]: x["value"]["content"] for x in lines if x["key"] == "file"
                }
                self.repos[repo].update(files)
                self.commits.append({"summary": header["summary"], "files": files})
                sha = self._sha(repo)
                return httpx2.Response(
                    200,
                    request=request,
                    json={
                        "commitUrl": f"https://huggingface.co/{repo}/commit/{sha}",
                        "commitOid": sha,
                        "pullRequestUrl": None,
                    },
                )
        if len(parts) >= 4 and parts[2] == "resolve":
            repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
            if repo not in self.repos:
                return error("RepoNotFound")
            if filename not in self.repos[repo]:
                return error("EntryNotFound")
            content = base64.b64decode(self.repos[repo][filename])
            blob = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
            headers = {
                "X-Repo-Commit": self._sha(repo),
                "ETag": f'"{blob}"',
                "Content-Length": str(len(content)),
            }
            return httpx2.Response(
                200, headers=headers, content=b"" if method == "HEAD" else content, request=request
            )
        return httpx2.Response(
            500, json={"error": f"FakeHub: unexpected {method} {path}"}, request=request
        )


def install_fake_hub(record: str | Path) -> FakeHub:
    """Route all of huggingface_hub's HTTP traffic to a :class:`FakeHub`."""
    import httpx2
    from huggingface_hub.utils import set_client_factory

    hub = FakeHub(Path(record))
    set_client_factory(
        lambda: httpx2.Client(transport=httpx2.MockTransport(hub.handle), follow_redirects=True)
    )
    return hub


def test_upload_refuses_a_folder_without_an_sae(tmp_path: Path) -> None:
    from tests.helpers import run_module

    proc = run_module(
        ["-m", "sae_lens_ext.cli", "upload", str(tmp_path), "--repo-id", "a/b"], check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"Error: PATH {tmp_path} holds no trained SAE (missing cfg.json, "
        "sae_weights.safetensors); give the output folder of `sae-lens train` or `sae-lens demo`"
    ]
