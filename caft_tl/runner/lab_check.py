"""Browser check of the JupyterLab experience: ``python -m caft_tl.runner.lab_check [--chapter 00]``.

Executes a chapter with the fast parameters (papermill, the suite's kernel), starts JupyterLab on
127.0.0.1 (a free port, a random token) with the executed copy, renders it in headless Chromium
and checks that the page shows the chapter's plotly figure and no error output. The screenshot is
saved beside the executed notebook (``runs/lab_check/<chapter>.png``) and its path printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from caft_tl.core import files
from caft_tl.runner import suite

#: marks in Lab's rendered DOM: a drawn plotly figure; an error or stderr output (Lab renders both as stderr)
FIGURE_MARK = re.compile(r'class="[^"]*\bjs-plotly-plot\b')
ERROR_MARK = re.compile(r'data-mime-type="application/vnd\.jupyter\.(?:stderr|error)"')


@dataclasses.dataclass
class LabCheck:
    chapter: str
    notebook: Path  # the executed copy Lab opened
    screenshot: Path
    figures: int  # plotly figures drawn on the page
    errors: int  # error or stderr outputs on the page

    @property
    def ok(self) -> bool:
        return self.figures > 0 and self.errors == 0


def chromium() -> str | None:
    """Debian's ``chromium`` (or another Chrome), or None."""
    for name in (os.environ.get("BROWSER_PATH"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trust(notebook: Path, data_dir: Path) -> None:
    """Sign the executed notebook for this Lab (its own output: trusted, so figures render)."""
    import nbformat
    from nbformat.sign import NotebookNotary

    nb = nbformat.read(str(notebook), as_version=4)
    NotebookNotary(data_dir=str(data_dir)).sign(nb)


def _start_lab(
    root: Path, token: str, data_dir: Path, log: Path, timeout: float = 90
) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    env = {**os.environ, "JUPYTER_DATA_DIR": str(data_dir)}  # the notary's signatures live here
    cmd = [
        str(Path(sys.executable).with_name("jupyter")),
        "lab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--ServerApp.root_dir={root}",
        f"--IdentityProvider.token={token}",
        "--ServerApp.open_browser=False",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        *(["--allow-root"] if os.geteuid() == 0 else []),
    ]
    proc = subprocess.Popen(
        cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited ({proc.returncode}); see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2) as r:
                if r.status == 200:
                    return proc, port
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"JupyterLab did not answer on 127.0.0.1:{port} within {timeout:.0f} s; see {log}")


def _chromium(browser: str, url: str, *args: str, budget_ms: int, timeout: float) -> str:
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--window-size=1400,3000",
        f"--virtual-time-budget={budget_ms}",
        *args,
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return out.stdout


def check(
    chapter: str = "00",
    run_dir: str | os.PathLike = "runs/lab_check",
    params: dict | None = None,
    budget_ms: int = 20_000,
) -> LabCheck:
    """Execute ``chapter`` (fast parameters) into ``run_dir`` and :func:`render` it."""
    run_dir = Path(run_dir).resolve()
    ((nb, _),) = suite.plan([chapter], params, fast=True)
    suite.run(run_dir, run_dir / "figures", [chapter], params, fast=True, progress=False)
    return render(run_dir / "notebooks" / nb.name, run_dir, budget_ms)


def render(notebook: str | os.PathLike, out_dir: str | os.PathLike, budget_ms: int = 20_000) -> LabCheck:
    """Open an executed notebook in JupyterLab on 127.0.0.1 in headless Chromium; count the plotly
    figures and error outputs on the rendered page; save ``out_dir/<name>.png`` (and the DOM)."""
    browser = chromium()
    if browser is None:
        raise RuntimeError("no Chrome/Chromium found (Debian: apt-get install chromium; or set BROWSER_PATH)")
    notebook, out_dir = Path(notebook).resolve(), Path(out_dir).resolve()
    data_dir = out_dir / "jupyter-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    _trust(notebook, data_dir)
    token = secrets.token_hex(16)
    lab, port = _start_lab(notebook.parent, token, data_dir, out_dir / "lab.log")
    try:
        url = f"http://127.0.0.1:{port}/doc/tree/{notebook.name}?token={token}"  # Lab's single-document view
        dom = _chromium(browser, url, "--dump-dom", budget_ms=budget_ms, timeout=180)
        screenshot, partial = (
            out_dir / f"{notebook.stem}.png",
            out_dir / f".{notebook.stem}.partial.png",
        )  # Chromium wants .png
        _chromium(browser, url, f"--screenshot={partial}", budget_ms=budget_ms, timeout=180)
        if not partial.exists() or not partial.stat().st_size:
            raise RuntimeError(f"Chromium wrote no screenshot of {url}")
        os.replace(partial, screenshot)
    finally:
        lab.terminate()
        try:
            lab.wait(15)
        except subprocess.TimeoutExpired:
            lab.kill()
    with files.atomic_write(out_dir / f"{notebook.stem}.dom.html") as f:
        f.write(dom)
    return LabCheck(
        notebook.stem, notebook, screenshot, len(FIGURE_MARK.findall(dom)), len(ERROR_MARK.findall(dom))
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--chapter", default="00", help="a chapter whose upstream artefacts are in --run-dir (00 needs none)"
    )
    ap.add_argument("--run-dir", default="runs/lab_check")
    args = ap.parse_args(argv)
    result = check(args.chapter, args.run_dir)
    print(
        f"{result.chapter}: {result.figures} plotly figure(s), {result.errors} error output(s) on the "
        "rendered page"
    )
    print(f"screenshot: {result.screenshot}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
