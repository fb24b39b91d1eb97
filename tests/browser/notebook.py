"""One notebook open in JupyterLab in Chromium: run it, find its widgets, move them, watch for errors.

JupyterLab runs with `expose_app_in_browser`, so the page's `window.jupyterapp` gives the notebook
model (cells, execution counts, outputs) and the kernel's message stream; widgets are driven the way a
user drives them: keyboard on slider handles, typing, picking from a <select>, clicking.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
KERNEL_LOGGED = re.compile(r"\[IPKernelApp\] ERROR|Exception (in comm_\w+|opening comm)")

# finds the NotebookPanel of `path` among the main-area widgets and keeps it as window.__mltPanel
FIND_PANEL = """(path) => {
  const app = window.jupyterapp;
  if (!app || !app.shell) return false;
  for (const w of app.shell.widgets('main')) {
    if (w.context && w.context.path === path && w.sessionContext) { window.__mltPanel = w; break; }
  }
  const p = window.__mltPanel;
  const k = p && p.sessionContext.session && p.sessionContext.session.kernel;
  return !!k && k.connectionStatus === 'connected' && k.status === 'idle' && p.content.model !== null;
}"""

# every error and every traceback on stderr the kernel sends, including those of widget callbacks
# (which reach no cell output); kept in window.__mltErrors
LISTEN = """() => {
  window.__mltErrors = [];
  const kernel = window.__mltPanel.sessionContext.session.kernel;
  kernel.iopubMessage.connect((_, msg) => {
    const c = msg.content;
    if (msg.header.msg_type === 'error')
      window.__mltErrors.push(c.ename + ': ' + c.evalue + '\\n' + (c.traceback || []).join('\\n'));
    else if (msg.header.msg_type === 'stream' && c.name === 'stderr' && /Traceback|Error:/.test(c.text))
      window.__mltErrors.push(c.text);
  });
}"""

RUN_ALL = """() => {
  window.__mltRun = null;
  window.jupyterapp.commands.execute('notebook:run-all-cells').then(
    (ok) => { window.__mltRun = 'done'; }, (e) => { window.__mltRun = 'failed: ' + e; });
}"""

CELLS = """() => {
  const cells = window.__mltPanel.content.model.cells, out = [];
  for (let i = 0; i < cells.length; i++) {
    const c = cells.get(i);
    const tags = (c.getMetadata ? c.getMetadata('tags') : (c.metadata || {}).tags) || [];
    const o = {index: i, type: c.type, source: c.sharedModel.getSource(), count: null, errors: [],
               injected: tags.includes('injected-parameters')};
    if (c.type === 'code') {
      o.count = c.executionCount;
      for (const x of c.outputs.toJSON()) {
        if (x.output_type === 'error')
          o.errors.push(x.ename + ': ' + x.evalue + '\\n' + (x.traceback || []).join('\\n'));
      }
    }
    out.push(o);
  }
  return out;
}"""

# what a redraw changes inside one explorer: the images' bytes (data: URLs), the figure's markup,
# the status line
SIGNATURE = """(e) => {
  const fig = e.querySelector('.mlt-figure'), status = e.querySelector('.mlt-status');
  return {imgs: fig ? [...fig.querySelectorAll('img')].map(i => i.src) : null,
          html: fig ? fig.innerHTML : null, text: fig ? fig.innerText : null,
          status: status ? status.innerText : ''};
}"""

# a traceback rendered anywhere in the notebook (cell outputs and Output widgets alike)
RENDERED_TRACEBACKS = """() => [...document.querySelectorAll('.jp-OutputArea-output')]
  .filter(e => (e.dataset.mimeType || '').includes('stderr')
               || e.querySelector('.jp-RenderedText[data-mime-type*="stderr"]'))
  .map(e => e.innerText).filter(t => /Traceback|\\w+Error\\b/.test(t))"""


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def first_line(source: str) -> str:
    lines = [line for line in source.splitlines() if line.strip()]
    return lines[0][:100] if lines else "<empty>"


class NotebookPage:
    """A notebook of the temporary copy, opened in its own tab and workspace."""

    def __init__(self, lab, context, path: Path, shots: Path):
        self.lab, self.context, self.path, self.shots = lab, context, Path(path), Path(shots)
        self.name, self.stem = self.path.name, self.path.stem
        self.page = None
        self.screenshots: list[Path] = []
        self._shots = 0
        self._log_offset = 0

    # ---- opening and running

    def open(self, timeout_s=180):
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.page.goto(self.lab.open_url(self.name, self.stem), timeout=60_000)
        try:
            self.page.wait_for_function(FIND_PANEL, arg=self.name, timeout=timeout_s * 1000, polling=250)
        except Exception as e:
            raise self.failure("open-failed", f"{self.name}: JupyterLab did not show the notebook with an idle "
                               f"kernel within {timeout_s} s ({type(e).__name__}).\n"
                               f"Server log:\n{self.lab.log_tail()}") from None
        self.page.evaluate(LISTEN)
        return self

    def run_all(self, timeout_s: float):
        """Run all cells (JupyterLab's own command) and fail, naming the cell, on an error or a hang."""
        self.page.evaluate(RUN_ALL)
        start = time.monotonic()
        while self.page.evaluate("() => window.__mltRun") is None:
            if time.monotonic() - start > timeout_s:
                running = [c for c in self.cells() if c["type"] == "code" and c["count"] is None]
                where = (f"cell index {running[0]['index']} (`{first_line(running[0]['source'])}`)"
                         if running else "no cell (all have an execution count)")
                raise self.failure("run-all-timeout", f"{self.name}: run all cells did not finish within "
                                   f"{timeout_s} s; still waiting at {where}")
            time.sleep(0.5)
        self.run_seconds = time.monotonic() - start
        cells = self.cells()
        for c in cells:
            if c["errors"]:
                raise self.failure("cell-error", f"{self.name} cell index {c['index']} "
                                   f"(`{first_line(c['source'])}`) raised:\n" + strip_ansi(c["errors"][0])[-3000:])
        not_run = [c for c in cells if c["type"] == "code" and c["count"] is None and c["source"].strip()]
        assert not not_run, (f"{self.name}: cells left unexecuted after run all: "
                             + ", ".join(f"{c['index']} (`{first_line(c['source'])}`)" for c in not_run))
        self.assert_no_errors("run all cells")
        return cells

    def cells(self):
        """The cells; `index` counts from 0 as in the notebook file (papermill's injected cell not counted)."""
        cells, shift = self.page.evaluate(CELLS), 0
        for c in cells:
            if c["injected"]:
                shift += 1
            else:
                c["index"] -= shift
        return cells

    # ---- errors

    def mark(self):
        """Start a new interval for `assert_no_errors` (kernel log and message stream)."""
        self._log_offset = self.lab.log_size()
        self.page.evaluate("() => { window.__mltErrors = []; }")

    def assert_no_errors(self, step: str):
        where = f"{self.name}, after {step}"
        sent = self.page.evaluate("() => window.__mltErrors")
        if sent:
            raise self.failure("error", f"{where}: the kernel reported an error:\n" + strip_ansi(sent[0])[-3000:])
        rendered = self.page.evaluate(RENDERED_TRACEBACKS)
        if rendered:
            raise self.failure("error", f"{where}: a traceback is shown in the notebook:\n" + rendered[0][-3000:])
        # an exception the kernel only logs (e.g. in a comm handler) goes to its stderr, the server's log;
        # the server's own tracebacks there (a closed websocket of a closed page) are not the notebook's
        if found := KERNEL_LOGGED.search(self.lab.log_since(self._log_offset)):
            log = found.string[found.start():found.start() + 3000]
            raise self.failure("error", f"{where}: the kernel logged an error:\n{log}")

    # ---- widgets

    def explorers(self, timeout_s=60):
        """The rendered explorers (`.mlt-explorer`), after waiting for the first to be visible."""
        loc = self.page.locator(".mlt-explorer")
        try:
            loc.first.wait_for(state="visible", timeout=timeout_s * 1000)
        except Exception:
            # every widget output also carries a text/plain repr (`VBox(...)`); it is on the page only
            # when the widget manager did not render the view
            outputs = self.page.locator(".jp-OutputArea-output")
            as_text = outputs.filter(has_text=re.compile(r"^\s*(VBox|HBox|Box|Tab)\(")).all_inner_texts()
            views = self.page.locator(".jp-OutputArea-output .jupyter-widgets").count()
            if as_text:
                message = (f"the explorer rendered as text ({as_text[0][:80]}...), not as widgets: the widget "
                           "manager did not render it")
            elif views:
                message = (f"{views} widget views rendered, but none carries the CSS class `mlt-explorer` "
                           "of the conventions")
            else:
                message = f"no widget appeared within {timeout_s} s after run all cells"
            raise self.failure("no-widgets", f"{self.name}: {message}") from None
        return loc.all()

    def signature(self, explorer):
        return explorer.evaluate(SIGNATURE)

    def wait_redraw(self, explorer, before, what: str, changed=("imgs",), timeout_s=120, settle_s=0.4):
        """Wait until the figure differs from `before` in one of `changed` and the status is no longer busy;
        returns (seconds from now until the first change, the settled signature)."""
        start = time.monotonic()
        first = None
        while True:
            sig = self.signature(explorer)
            now = time.monotonic()
            moved = any(sig[k] is not None and sig[k] != before[k] for k in changed)
            busy = "computing" in (sig["status"] or "").lower()
            if moved and first is None:
                first = now - start
            if moved and not busy:
                # the widget may still be adding outputs (figure, then the token heatmap): settle
                time.sleep(settle_s)
                if self.signature(explorer) == sig:
                    return first, sig
            if now - start > timeout_s:
                raise self.failure("no-redraw", f"{self.name}: {what}: the figure did not change within "
                                   f"{timeout_s} s (status: {sig['status']!r})")
            time.sleep(0.03)

    def shot(self, step: str, element=None, failed=False) -> Path | None:
        """Screenshot of the page (or of one element); those of failures are not kept as the notebook's views."""
        if self.page is None:
            return None
        path = self.shots / f"{self.stem}__{self._shots:02d}_{'FAILED_' if failed else ''}{step}.png"
        self._shots += 1
        try:
            (element or self.page).screenshot(path=str(path), timeout=15_000)
        except Exception:
            return None
        if not failed:
            self.screenshots.append(path)
        return path

    def failure(self, step: str, message: str) -> AssertionError:
        """The error to raise, with a screenshot of the page as it was."""
        path = self.shot(step, failed=True)
        return AssertionError(f"{message}\n(screenshot: {path})" if path else message)

    def close(self):
        if self.page is not None:
            self.page.close()
            self.page = None
        for session in self.lab.api("/api/sessions"):
            if session.get("path", "").endswith(self.name):
                self.lab.api(f"/api/sessions/{session['id']}", method="DELETE", timeout=30)


# ---- controls, moved as a user moves them

def control_kind(control) -> str:
    if control.locator("select").count():
        return "dropdown"
    if control.locator(".noUi-handle").count():
        return "slider"
    if control.locator("input[type=text], textarea").count():
        return "text"
    cls = control.get_attribute("class")
    raise AssertionError(f"cannot drive a control with classes {cls!r} (expected a slider or a dropdown)")


def slider_value(control) -> str:
    return control.locator(".widget-readout").inner_text().strip()


def slider_range(control) -> tuple[float, float, float]:
    """(value, min, max) from the slider handle's ARIA attributes."""
    handle = control.locator(".noUi-handle").first
    return tuple(float(handle.get_attribute(a)) for a in ("aria-valuenow", "aria-valuemin", "aria-valuemax"))


def press_slider(control, page, towards="far") -> str:
    """One arrow-key step on the slider's handle, as a user would press it: towards "max", "min", or
    "far" (the end further away). Returns "old -> new" (the readouts)."""
    now, lo, hi = slider_range(control)
    if towards == "far":
        towards = "max" if now - lo <= hi - now else "min"
    before = slider_value(control)
    control.locator(".noUi-handle").first.focus()
    page.keyboard.press("ArrowRight" if towards == "max" else "ArrowLeft")
    after = slider_value(control)
    assert after != before, (f"the slider {control.get_attribute('class')!r} did not move towards its {towards} "
                             f"from {before} (range {lo:g}..{hi:g})")
    return f"{before} -> {after}"


def type_slider(control, page, value: str) -> str:
    """Type a value into the slider's editable readout and press Enter; returns "old -> new"."""
    readout = control.locator(".widget-readout")
    before = slider_value(control)
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(str(value))
    page.keyboard.press("Enter")
    after = slider_value(control)
    assert after == str(value), f"typing {value} into the slider {control.get_attribute('class')!r} gave {after}"
    return f"{before} -> {after}"


def pick_other(control) -> tuple[str, str]:
    """Select another option of a dropdown; returns (old label, new label)."""
    select = control.locator("select")
    labels = [t.strip() for t in select.locator("option").all_inner_texts()]
    current = select.evaluate("(s) => s.options[s.selectedIndex] ? s.options[s.selectedIndex].text : ''").strip()
    others = [label for label in labels if label != current]
    assert others, f"the dropdown {control.get_attribute('class')!r} has no other option than {current!r}"
    select.select_option(label=others[0])
    return current, others[0]


def pick(control, label: str) -> str:
    """Select the dropdown option `label`; returns "old -> new"."""
    select = control.locator("select")
    current = select.evaluate("(s) => s.options[s.selectedIndex] ? s.options[s.selectedIndex].text : ''").strip()
    assert current != label, f"the dropdown {control.get_attribute('class')!r} already shows {label!r}"
    select.select_option(label=label)
    return f"{current} -> {label}"


def move(control, page) -> str:
    """Move one control (slider or dropdown) and say how."""
    kind = control_kind(control)
    if kind == "slider":
        return f"slider {press_slider(control, page)}"
    if kind == "dropdown":
        return "dropdown {} -> {}".format(*pick_other(control))
    raise AssertionError("`mlt-primary` must be a slider or a dropdown, found a text box")
