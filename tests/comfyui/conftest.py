"""A real ComfyUI for the adapter tests: started on CPU, on a free loopback port, with a tiny checkpoint.

Skipped unless ``COMFYUI_PATH`` points to a ComfyUI checkout (a folder with ``main.py``). ComfyUI runs with
``COMFYUI_PYTHON`` (default: the Python running pytest). See docs/COMFYUI_TESTING.md.

The session fixture ``comfy`` builds a random-weight SD1.5-layout checkpoint with ComfyUI's own classes
(``tiny_checkpoint.py``), writes an extra_model_paths YAML that adds this pack's parent folder and the probe
pack (``hspace_probe/``) as custom_nodes folders and temp folders as ``checkpoints`` and ``diffusers``, starts
``main.py --cpu`` (only this pack and the probe pack are loaded: ``--whitelist-custom-nodes``), waits for the
HTTP API, and always kills the server at the end (and deletes the ~360 MB checkpoint).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CHECKPOINT = "hspace_tiny_sd15.safetensors"
PROBE_PACK = "hspace_probe"
STARTUP_TIMEOUT_S = float(os.environ.get("COMFYUI_STARTUP_TIMEOUT", "180"))
BUILD_TIMEOUT_S = 600


class ComfyClient:
    """The HTTP API of a ComfyUI server (loopback only): queue a prompt, wait for its history, fetch outputs."""

    def __init__(self, base_url: str, timeout_s: float = 30.0):
        if not base_url.startswith(("http://127.0.0.1:", "http://localhost:")):
            raise ValueError(f"a loopback URL expected, got {base_url}")
        self.base_url, self.timeout_s, self.client_id = base_url, timeout_s, uuid.uuid4().hex

    def _request(self, path: str, body: dict | None = None) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data,
                                         headers={"Content-Type": "application/json"} if data else {})
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return response.read()

    def get_json(self, path: str) -> Any:
        return json.loads(self._request(path))

    def ready(self) -> bool:
        try:
            self.get_json("/system_stats")
            return True
        except (urllib.error.URLError, ConnectionError, OSError, ValueError):
            return False

    def object_info(self) -> dict[str, Any]:
        return self.get_json("/object_info")

    def queue_prompt(self, prompt: dict[str, Any]) -> str:
        """Queue an API-format prompt; a prompt that fails validation raises with ComfyUI's error."""
        try:
            answer = json.loads(self._request("/prompt", {"prompt": prompt, "client_id": self.client_id}))
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"ComfyUI refused the prompt: {exc.read().decode(errors='replace')}") from exc
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout_s: float = 120.0) -> dict[str, Any]:
        """The history entry of a finished prompt; raises on an execution error or after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry:  # ComfyUI adds a prompt to the history once it has finished
                status = entry.get("status") or {}
                if status.get("status_str") == "error":
                    raise AssertionError(f"the prompt failed: {json.dumps(status.get('messages'))[-4000:]}")
                return entry
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout_s:.0f} s")

    def run(self, prompt: dict[str, Any], timeout_s: float = 120.0) -> dict[str, Any]:
        """Queue a prompt and return its outputs: ``{node_id: ui dict}``."""
        return self.wait(self.queue_prompt(prompt), timeout_s)["outputs"]

    def running(self) -> list[str]:
        """The ids of the prompts being executed now."""
        return [item[1] for item in self.get_json("/queue").get("queue_running", [])]

    def interrupt(self, prompt_id: str | None = None) -> None:
        """What the Cancel button does."""
        self._request("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def view(self, file_info: dict[str, str]) -> bytes:
        """The bytes of an output file, as listed in a node's ui output (``filename``, ``subfolder``, ``type``)."""
        query = urllib.parse.urlencode({k: file_info.get(k, "") for k in ("filename", "subfolder", "type")})
        return self._request(f"/view?{query}")

    def latent(self, file_info: dict[str, str]):
        """The tensor of a SaveLatent output."""
        import safetensors.torch

        return safetensors.torch.load(self.view(file_info))["latent_tensor"]


def comfyui_path() -> Path | None:
    value = os.environ.get("COMFYUI_PATH")
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    return path if (path / "main.py").is_file() else None


@pytest.fixture(scope="session")
def comfyui_dir() -> Path:
    """The ComfyUI checkout of COMFYUI_PATH (no server started); skips the test without one."""
    path = comfyui_path()
    if path is None:
        pytest.skip("set COMFYUI_PATH to a ComfyUI checkout to run the real-ComfyUI tests")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the pack must import without its root on the path, as in a user's ComfyUI
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _build_checkpoint(python: str, comfy_dir: Path, out: Path) -> None:
    result = subprocess.run([python, str(HERE / "tiny_checkpoint.py"), str(comfy_dir), str(out)], cwd=comfy_dir,
                            env=_child_env(), capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if result.returncode != 0 or not out.is_file():
        raise RuntimeError(f"building the tiny checkpoint failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def _write_paths_yaml(root: Path) -> Path:
    probe_dir = root / "probe_nodes"
    probe_dir.mkdir()
    (probe_dir / PROBE_PACK).symlink_to(HERE / PROBE_PACK, target_is_directory=True)
    config = {"hspace_tests": {
        "custom_nodes": f"{REPO.parent}\n{probe_dir}\n",
        "checkpoints": str(root / "checkpoints"),
        "diffusers": str(root / "diffusers"),
    }}
    path = root / "extra_model_paths.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
    return path


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)  # the server's own process group (start_new_session)
        process.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=15)


def _wait_ready(client: ComfyClient, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with code {process.returncode}:\n{log.read_text()[-5000:]}")
        if client.ready():
            return
        time.sleep(0.5)
    raise RuntimeError(f"ComfyUI did not answer within {STARTUP_TIMEOUT_S:.0f} s:\n{log.read_text()[-5000:]}")


class ComfyServer:
    """A running ComfyUI: its client, folders and log."""

    def __init__(self, client: ComfyClient, root: Path, process: subprocess.Popen, log: Path, comfy_dir: Path):
        self.client, self.root, self.process, self.log = client, root, process, log
        self.output_dir = root / "base" / "output"
        self.diffusers_dir = root / "diffusers"  # listed by ComfyUI as models/diffusers
        self.checkpoint = CHECKPOINT
        self.pack_name = REPO.name
        self.comfy_dir = comfy_dir
        patcher_source = (self.comfy_dir / "comfy" / "model_patcher.py").read_text(errors="replace")
        # ComfyUI up to 0.19.3 lacks the middle-block patch; the adapter then falls back to output block 0
        self.has_middle_patch = "def set_model_middle_block_after_patch" in patcher_source

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def probe_records(self, tag: str) -> list[dict]:
        path = self.output_dir / "hspace_probe" / f"{tag}.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def comfy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    comfy_dir = comfyui_path()
    if comfy_dir is None:
        pytest.skip("set COMFYUI_PATH to a ComfyUI checkout to run the real-ComfyUI tests")
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    root = tmp_path_factory.mktemp("comfyui")
    for sub in ("base/custom_nodes", "base/output", "base/input", "base/temp", "base/user", "checkpoints",
                "diffusers"):
        (root / sub).mkdir(parents=True)
    _build_checkpoint(python, comfy_dir, root / "checkpoints" / CHECKPOINT)
    yaml_path = _write_paths_yaml(root)

    port = _free_port()
    log = root / "comfyui.log"
    command = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--base-directory", str(root / "base"), "--extra-model-paths-config", str(yaml_path),
               "--database-url", "sqlite:///:memory:", "--disable-auto-launch", "--disable-api-nodes",
               "--disable-all-custom-nodes", "--whitelist-custom-nodes", REPO.name, PROBE_PACK]
    with open(log, "wb") as log_file:
        process = subprocess.Popen(command, cwd=comfy_dir, env=_child_env(), stdout=log_file,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        client = ComfyClient(f"http://127.0.0.1:{port}")
        _wait_ready(client, process, log)
        yield ComfyServer(client, root, process, log, comfy_dir)
    finally:
        _stop(process)
        (root / "checkpoints" / CHECKPOINT).unlink(missing_ok=True)
