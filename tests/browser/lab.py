"""A throw-away JupyterLab server and Chromium, and the processes they leave behind."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

# JupyterLab settings for a quiet, predictable UI: no news or update toasts over the notebook, a
# notebook without a kernel choice starts the default kernel instead of asking in a dialog, and every
# cell stays rendered (no windowing), so widgets far down the page exist in the DOM.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"autoStartDefaultKernel": True,
                                                                      "windowingMode": "none"},
}


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found (Debian: apt-get install chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """The processes started under this test process since it was made (JupyterLab, its kernels, the
    Playwright driver, Chromium), by (pid, create_time) so that a reused PID is not mistaken for one."""

    def __init__(self):
        self.before = set(self._children())
        self.seen: dict[tuple[int, float], str] = {}

    @staticmethod
    def _children():
        out = {}
        for p in psutil.Process().children(recursive=True):
            try:
                out[(p.pid, p.create_time())] = " ".join(p.cmdline())[:160] or p.name()
            except psutil.Error:
                pass
        return out

    def record(self):
        self.seen.update({k: v for k, v in self._children().items() if k not in self.before})

    def alive(self) -> list[str]:
        left = []
        for (pid, created), what in self.seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"pid {pid}: {what}")
            except psutil.Error:
                pass
        return left

    def wait_gone(self, timeout=30.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while (left := self.alive()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left


class Lab:
    """`python -m jupyterlab` from this venv on 127.0.0.1, a free port and a token, serving `root`."""

    def __init__(self, root: Path, home: Path, extra_pythonpath: Path):
        self.root, self.home = Path(root), Path(home)
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.home / "jupyterlab.log"
        settings = self.home / "user-settings"
        for name, value in LAB_SETTINGS.items():
            (settings / name).parent.mkdir(parents=True, exist_ok=True)
            (settings / name).write_text(json.dumps(value))
        env = dict(os.environ)
        env.pop("MPLBACKEND", None)  # the kernel draws with matplotlib's inline backend, as for a user
        env.pop("JUPYTER_PLATFORM_DIRS", None)
        env.update(JUPYTER_CONFIG_DIR=str(self.home / "config"), JUPYTER_DATA_DIR=str(self.home / "data"),
                   JUPYTER_RUNTIME_DIR=str(self.home / "runtime"), IPYTHONDIR=str(self.home / "ipython"),
                   HF_HUB_OFFLINE="1",
                   PYTHONPATH=os.pathsep.join([str(extra_pythonpath), *filter(None, [env.get("PYTHONPATH")])]))
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
               f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={self.home / 'workspaces'}",
               "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
               "--LabApp.extension_manager=readonly", "--MappingKernelManager.default_kernel_name=python3"]
        if os.geteuid() == 0:  # CI containers run as root
            cmd.append("--allow-root")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def api(self, path, method="GET", timeout=10.0):
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def wait_ready(self, timeout=120.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.api("/api/status", timeout=2)
                return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"JupyterLab did not answer on {self.url} within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars=4000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def log_size(self) -> int:
        self._log.flush()
        return self.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        self._log.flush()
        with open(self.log_path, errors="replace") as f:
            f.seek(offset)
            return f.read()

    def open_url(self, notebook: str, workspace: str) -> str:
        # a workspace of its own per notebook, reset: no tab of an earlier notebook is restored (and its
        # kernel restarted) when the next page loads
        return f"{self.url}/lab/workspaces/{workspace}/tree/{notebook}?reset&token={self.token}"

    def shutdown_kernels(self, timeout=30.0):
        for session in self.api("/api/sessions"):
            try:
                self.api(f"/api/sessions/{session['id']}", method="DELETE", timeout=timeout)
            except OSError:
                pass
        for kernel in self.api("/api/kernels"):
            try:
                self.api(f"/api/kernels/{kernel['id']}", method="DELETE", timeout=timeout)
            except OSError:
                pass

    def stop(self, timeout=30.0):
        if self.proc.poll() is None:
            try:
                self.shutdown_kernels()
            except OSError:
                pass
            self.proc.send_signal(signal.SIGTERM)  # the server shuts its kernels down on SIGTERM
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def copy_notebooks(src: Path, dst: Path, parameters: dict) -> list[Path]:
    """Copy every notebook, each parameterised by papermill (an injected-parameters cell), to `dst`."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for path in sorted(Path(src).glob("*.ipynb")):
        nb = parameterize_notebook(load_notebook_node(str(path)), parameters)
        nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
        nbformat.write(nb, dst / path.name)
        out.append(dst / path.name)
    return out

