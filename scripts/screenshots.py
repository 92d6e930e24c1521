"""Screenshots of the MLflow UI on a finished run, as a person sees it: headless Chromium on the
links `selfreward ui` prints (the parent's model metrics, the compare view of the stage runs, the
verdict artifact, the champion's model version).

    python scripts/screenshots.py --output runs [--run demo] [--dest docs/images]

Needs Debian's `chromium` (`apt-get install chromium`). Starts its own MLflow UI on a free loopback
port and stops it afterwards; writes `<dest>/<what>.png`, one per link.

Chromium is driven over its DevTools protocol and given `--settle` seconds of real time per page:
MLflow's run page keeps auto-refresh timers running, so `--virtual-time-budget` never let its charts
finish loading.
"""

import argparse
import base64
import io
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

from pipeline.cli import ui_command
from pipeline.env import apply_env_defaults
from pipeline.ui_links import run_links


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the MLflow UI exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the MLflow UI did not answer {url} within {timeout:.0f} s")


# MLflow 3.17 opens its assistant panel beside every page on first load; a screenshot shows the page.
_QUIET_UI = ("localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
             "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false')")


def screenshot(chromium: str, url: str, path: Path, size: str, settle_s: float) -> None:
    """Open `url` in a fresh headless Chromium, wait `settle_s` seconds, save the viewport as a PNG."""
    from websockets.sync.client import connect

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="screenshots-") as profile:
        browser = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={size}",
             f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            with connect(_page_socket(port), max_size=None) as page:
                ids = itertools.count(1)

                def call(method: str, **params) -> dict:
                    request = next(ids)
                    page.send(json.dumps({"id": request, "method": method, "params": params}))
                    while (reply := json.loads(page.recv(timeout=60))).get("id") != request:
                        pass  # events
                    return reply["result"]

                call("Page.navigate", url=url)
                call("Runtime.evaluate", expression=_QUIET_UI)
                call("Page.reload")
                time.sleep(settle_s)  # real time: the page's requests, charts and refresh timers
                png = base64.b64decode(call("Page.captureScreenshot", format="png")["data"])
        finally:
            os.killpg(browser.pid, signal.SIGTERM)
            browser.wait(timeout=30)
    # A 128-colour palette: a fifth of the size, no visible loss on a UI page (small enough for a README).
    Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128).save(path, optimize=True)


def _page_socket(port: int, timeout: float = 30) -> str:
    """The DevTools websocket of the browser's first page, once it answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as response:
                pages = [t for t in json.load(response) if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"Chromium's DevTools did not answer on port {port} within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs", help="the run's output directory (holds mlflow.db)")
    parser.add_argument("--run", dest="run_name", help="run name (default: the most recent run)")
    parser.add_argument("--experiment", default="selfreward")
    parser.add_argument("--dest", default="docs/images", help="folder for the PNGs")
    parser.add_argument("--size", default="1600,1000", help="browser window WIDTH,HEIGHT")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds each page gets to load (default 15)")
    args = parser.parse_args(argv)
    apply_env_defaults()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("screenshots: chromium not found (apt-get install chromium)", file=sys.stderr)
        return 2
    output, dest = Path(args.output).resolve(), Path(args.dest)
    if not (output / "mlflow.db").is_file():
        print(f"screenshots: no MLflow store in {output}", file=sys.stderr)
        return 2
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    links = run_links(output / "mlflow.db", args.experiment, args.run_name, base)
    if not links:
        print(f"screenshots: no run {args.run_name or '(most recent)'} in {output}", file=sys.stderr)
        return 2
    dest.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(dest / "mlflow-ui.log", "w") as log:
        server = subprocess.Popen(ui_command(output, port), env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            wait_healthy(f"{base}/health", server)
            for what, url in links.items():
                path = dest / f"{what.replace(' ', '-')}.png"
                screenshot(chromium, url, path, args.size, args.settle)
                print(f"{path}  <- {url}")
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
