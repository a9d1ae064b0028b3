"""The pre-install hook's script against a fake API server: API discovery only, the cause named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from chartkit import find

DISCOVERY_PATH = "/apis/kubeflow.org/v1"  # readable by every authenticated account (system:discovery)


def discovery(*resources: str) -> dict[str, Any]:
    """The APIResourceList the API server answers for kubeflow.org/v1."""
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "kubeflow.org/v1",
            "resources": [{"name": r, "singularName": "", "namespaced": True, "kind": r.title(),
                           "verbs": ["get", "list", "create"]} for r in resources]}


def status(code: int, reason: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code}


class FakeAPI:
    """Answers the discovery GET with whatever the test set; records the paths asked for."""

    def __init__(self) -> None:
        self.answer: tuple[int, dict[str, Any]] = (404, status(404, "NotFound"))
        self.path = DISCOVERY_PATH  # the one path answered with `answer`
        self.paths: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.paths.append(self.path)
                code, body = api.answer if self.path == api.path else (404, status(404, "NotFound"))
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def fake_api() -> Iterator[FakeAPI]:
    api = FakeAPI()
    yield api
    api.close()


@pytest.fixture(scope="module")
def check_script(render: Any) -> str:
    """The script exactly as the rendered hook Job runs it (`python -c <script>`)."""
    (job,) = find(render(), "Job", "crd-check")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-c"]
    (script,) = container["args"]
    return str(script)


def run_check(
    script: str, api: FakeAPI, tmp_path: Path, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": api.url}}],
        "users": [{"name": "fake", "user": {"token": "t"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env["KUBECONFIG"] = str(kubeconfig)
    env.pop("SAIL_JOB_API", None)
    env.update(extra_env)
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.parametrize(("answer", "rc", "message"), [
    ((404, status(404, "NotFound")), 1,
     "PyTorchJobs are not served (kubeflow.org/v1 is not an API group version of this cluster): install the "
     "Kubeflow Training Operator v1.9: kubectl apply "),
    ((200, discovery("pytorchjobs", "pytorchjobs/status")), 0, "ok: kubeflow.org/v1 serves pytorchjobs"),
    ((200, discovery("tfjobs")), 1, "kubeflow.org/v1 is served but without pytorchjobs (tfjobs)"),
    ((403, status(403, "Forbidden")), 1, "(HTTP 403): the hook's service account is not authenticated"),
])
def test_check_names_the_cause(check_script: str, fake_api: FakeAPI, tmp_path: Path,
                               answer: tuple[int, dict[str, Any]], rc: int, message: str) -> None:
    fake_api.answer = answer
    result = run_check(check_script, fake_api, tmp_path)
    assert result.returncode == rc, result.stderr
    out = result.stdout if rc == 0 else result.stderr
    assert message in out
    assert "Traceback" not in result.stderr
    assert len(out.strip().splitlines()) == 1  # one line naming the cause
    assert fake_api.paths == [DISCOVERY_PATH] * len(fake_api.paths)  # discovery only


TRAINER_PATH = "/apis/trainer.kubeflow.org/v1alpha1"


@pytest.mark.parametrize(("answer", "rc", "message"), [
    ((404, status(404, "NotFound")), 1,
     "TrainJobs are not served (trainer.kubeflow.org/v1alpha1 is not an API group version of this cluster): "
     "install Kubeflow Trainer v2.3: kubectl apply --server-side -k "),
    ((200, discovery("trainjobs", "trainjobs/status", "trainingruntimes")), 0,
     "ok: trainer.kubeflow.org/v1alpha1 serves trainjobs"),
    ((200, discovery("trainingruntimes")), 1,
     "trainer.kubeflow.org/v1alpha1 is served but without trainjobs"),
])
def test_check_asks_for_trainjobs_when_chosen(
    check_script: str, fake_api: FakeAPI, tmp_path: Path,
    answer: tuple[int, dict[str, Any]], rc: int, message: str,
) -> None:
    fake_api.answer, fake_api.path, fake_api.paths = answer, TRAINER_PATH, []
    try:
        result = run_check(check_script, fake_api, tmp_path, SAIL_JOB_API="trainjob")
    finally:
        fake_api.path = DISCOVERY_PATH
    assert result.returncode == rc, result.stderr
    assert message in (result.stdout if rc == 0 else result.stderr)
    assert fake_api.paths == [TRAINER_PATH] * len(fake_api.paths) and fake_api.paths  # discovery only
