"""The frontend in headless Chromium: examples run from the browser, screenshots in both node renderers.

Skipped unless COMFYUI_PATH is set and a Chromium is found (``chromium`` on PATH, or ``HSPACE_CHROMIUM``).
Loads an example through ``app.loadGraphData``, queues it from the page, waits for the run, and takes a
screenshot with the classic LiteGraph canvas and another with the Vue renderer ("Nodes 2.0",
setting ``Comfy.VueNodes.Enabled``). Screenshots go to ``HSPACE_SCREENSHOTS`` (default: the test's temp
folder) for a person to look at; the test checks what the page reports: the run finished without error and
the hspace nodes received their outputs (preview images, report text) in both modes.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = ["PCA directions and strength sweep (embedded digits)", "Direction arithmetic and saving (embedded digits)",
            "Real image inversion and Asyrp edit (embedded digits)", "Jacobian directions of one image (embedded digits)"]
# what the frontend made of the V3 nodes' saved widget values (a DynamicCombo's option inputs) and sockets
V3_WIDGETS = {
    "Real image inversion and Asyrp edit (embedded digits)": {
        "HSpaceInvertImage": [("method", "edit_friendly"), ("method.eta", 1.0), ("seed", 0), ("cfg", 1.0)],
        "HSpaceSampleFromNoise": [("mode", "ddim"), ("mode", "asymmetric"), ("mode.t_edit", 400), ("cfg", 1.0)]},
}
DYNAMIC_COMBO_NODES = {"HSpaceInvertImage": "method", "HSpaceSampleFromNoise": "mode"}
V3_SOCKETS = {"HSpaceJoinDirections": ["directions.direction0", "directions.direction1"]}


def chromium() -> str | None:
    return os.environ.get("HSPACE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Page:
    """A Chrome DevTools Protocol session on one page (aiohttp's websocket client)."""

    def __init__(self, ws):
        self.ws, self.next_id = ws, 0

    async def call(self, method: str, **params):
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json(timeout=600)
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    async def js(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await self.js(expression):
                return
            await asyncio.sleep(0.5)
        raise TimeoutError(f"not true within {timeout_s:.0f} s: {expression}")

    async def screenshot(self, path: Path) -> None:
        data = (await self.call("Page.captureScreenshot", format="png"))["data"]
        path.write_bytes(base64.b64decode(data))


RUN = """(async () => {
  const graph = await (await fetch(%s)).json();
  await app.loadGraphData(graph);
  window.__hspace = {done: false, error: null};
  api.addEventListener("execution_error", (e) => { window.__hspace.error = e.detail.exception_message; });
  api.addEventListener("execution_success", () => { window.__hspace.done = true; });
  await app.queuePrompt(0, 1);
  const refused = app.lastNodeErrors && Object.keys(app.lastNodeErrors).length ? app.lastNodeErrors : null;
  if (refused) window.__hspace.error = "refused: " + JSON.stringify(refused);
  return true;
})()"""

CLOSE_DIALOGS_AND_FIT = """(async () => {
  document.querySelectorAll(".p-dialog-close-button").forEach((b) => b.click());
  await app.extensionManager.command.execute("Comfy.Canvas.FitView");
  return true;
})()"""

SWITCH_MODES = """(async () => {
  const sleep = (t) => new Promise((r) => setTimeout(r, t));
  const found = {};
  for (const type of %s) {
    const errors = [];
    const original = console.error;
    console.error = (...a) => { errors.push(a.map((x) => x?.stack ?? String(x)).join(" ")); original(...a); };
    const node = LiteGraph.createNode(type);
    console.error = original;
    if (!node) throw new Error(`no node ${type}: ${errors.join(" | ")}`);
    app.graph.add(node);
    await sleep(300);
    const fresh = node.serialize().widgets_values;
    const combo = node.widgets.find((w) => w.type === "combo" && (w.options?.values ?? []).length > 1);
    const keys = [...combo.options.values];
    for (const key of [...keys.slice(1), keys[0]]) { combo.value = key; combo.callback?.(key); await sleep(300); }
    found[type] = {fresh, switched: node.serialize().widgets_values, widgets: node.widgets.map((w) => w.name)};
    app.graph.remove(node);
  }
  return found;
})()"""

OUTPUTS = """(() => app.graph._nodes.filter((n) => n.type.startsWith("HSpace")).map((n) => ({
  type: n.type, images: (n.imgs ?? []).length,
  text: n.hspaceReport?.element?.textContent ?? "",
  textVisible: !!n.hspaceReport?.element && n.hspaceReport.element.getClientRects().length > 0,
  widgets: (n.widgets ?? []).map((w) => [w.name, w.value]),
  linked: (n.inputs ?? []).filter((i) => i.link != null).map((i) => i.name),
})))()"""


async def drive(url: str, debug_port: int, out: Path) -> dict:
    import aiohttp

    targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/json").read())
    page_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
    report = {}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(page_url, max_msg_size=0) as ws:
            page = Page(ws)
            await page.call("Page.enable")
            await page.call("Page.navigate", url=url)
            await page.wait_for("typeof window.app !== 'undefined' && !!window.app.graph && !!window.comfyAPI", 120)
            await page.js("window.api = window.comfyAPI.api.api; true")
            await page.js("app.extensionManager.setting.set('Comfy.TutorialCompleted', true)")
            await page.wait_for("!!LiteGraph.registered_node_types['HSpaceJoinDirections']", 60)
            report["switched modes"] = await page.js(SWITCH_MODES % json.dumps(list(DYNAMIC_COMBO_NODES)))
            for name in os.environ.get("HSPACE_BROWSER_ONLY", "").split("|") if os.environ.get("HSPACE_BROWSER_ONLY") else EXAMPLES:
                await page.js("app.extensionManager.setting.set('Comfy.VueNodes.Enabled', false)")
                await page.js(RUN % json.dumps(f"/api/workflow_templates/{REPO.name}/{name}.json"))
                await page.wait_for("window.__hspace.done || !!window.__hspace.error", 600)
                error = await page.js("window.__hspace.error")
                assert error is None, f"{name}: {error}"
                await page.js(CLOSE_DIALOGS_AND_FIT)
                await asyncio.sleep(2)
                await page.screenshot(out / f"{name} - classic.png")
                classic = await page.js(OUTPUTS)
                await page.js("app.extensionManager.setting.set('Comfy.VueNodes.Enabled', true)")
                await asyncio.sleep(3)
                await page.js(CLOSE_DIALOGS_AND_FIT)
                await asyncio.sleep(2)
                await page.screenshot(out / f"{name} - vue.png")
                vue = await page.js(OUTPUTS)
                report[name] = {"classic": classic, "vue": vue}
    return report


def test_examples_show_their_outputs_in_both_renderers(comfy, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium found (set HSPACE_CHROMIUM)")
    pytest.importorskip("aiohttp")
    out = Path(os.environ.get("HSPACE_SCREENSHOTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    process = subprocess.Popen([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1800,1100",
                                f"--remote-debugging-port={port}", f"--user-data-dir={tmp_path / 'profile'}",
                                "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        report = asyncio.run(drive(comfy.client.base_url, port, out))
    finally:
        process.kill()
        process.wait(timeout=30)
    (out / "outputs.json").write_text(json.dumps(report, indent=1))
    # switching a DynamicCombo through its options and back leaves the node as it was (no widget left behind that
    # would shift the saved values)
    for node_type, switched in report.pop("switched modes").items():
        assert switched["switched"] == switched["fresh"], (node_type, switched)
        assert switched["widgets"][0] == DYNAMIC_COMBO_NODES[node_type] or DYNAMIC_COMBO_NODES[node_type] in \
            switched["widgets"], (node_type, switched["widgets"])
    for name, modes in report.items():
        for mode, nodes in modes.items():
            by_type = {}
            for node in nodes:
                by_type.setdefault(node["type"], []).append(node)
            if "HSpacePCA" in by_type:
                assert by_type["HSpacePCA"][0]["images"] >= 1 or mode == "vue", (name, mode, by_type["HSpacePCA"])
            for node_type, expected in V3_WIDGETS.get(name, {}).items():
                shown = [tuple(w) for node in by_type[node_type] for w in node["widgets"]]
                assert set(expected) <= set(shown), (name, mode, node_type, shown)
            for node_type, sockets in V3_SOCKETS.items():
                for node in by_type.get(node_type, []):
                    assert set(sockets) <= set(node["linked"]), (name, mode, node_type, node["linked"])
            if "HSpaceDirectionInfo" in by_type:
                info = by_type["HSpaceDirectionInfo"][0]
                assert "h_shape" in info["text"] and info["textVisible"], (name, mode, info)
