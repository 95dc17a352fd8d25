"""The report in a real browser: headless Chromium, network blocked, driven over the DevTools pipe.

No pip dependency: the Chrome DevTools Protocol is spoken over ``--remote-debugging-pipe`` (NUL-terminated
JSON on fds 3 and 4). Asserts no console error, no request other than the file itself and its data: URIs,
every image decoded, and a non-empty print-to-PDF. Skips, saying so, where no Chromium is installed
(CI installs Debian's ``chromium`` in .ci/run).
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

import pytest
from fixtures.make_audit_fixture import write_audit_fixture

from reports import render_report

DEADLINE_S = 60
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "--remote-debugging-pipe"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium; "
                                                          "CI installs it in .ci/run)")


class Pipe:
    """A minimal CDP client over the browser's debugging pipe, every read bounded by one deadline."""

    def __init__(self, proc: subprocess.Popen, to_browser: int, from_browser: int, deadline: float):
        self.proc, self.w, self.r, self.deadline = proc, to_browser, from_browser, deadline
        self.buf, self.events, self.next_id = b"", [], 0

    def _message(self) -> dict:
        while b"\0" not in self.buf:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the debugging pipe")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._message()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        while True:
            event = self._message()
            if event.get("method") == method:
                return event
            self.events.append(event)


@pytest.fixture(scope="module")
def browser_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser")
    html = render_report(write_audit_fixture(folder), pdf=False)["html"]
    deadline = time.monotonic() + DEADLINE_S
    to_r, to_w = os.pipe()      # we write, Chromium reads on fd 3
    from_r, from_w = os.pipe()  # Chromium writes on fd 4, we read

    def child_fds():
        os.dup2(to_r, 3)
        os.dup2(from_w, 4)

    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                close_fds=False, preexec_fn=child_fds,  # fds 3 and 4 must survive exec
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_r)
        os.close(from_w)
        cdp = Pipe(proc, to_w, from_r, deadline)
        try:
            target = cdp.call("Target.createTarget", url="about:blank")["targetId"]
            session = cdp.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                cdp.call(f"{domain}.enable", session)
            cdp.call("Page.navigate", session, url=html.resolve().as_uri())
            cdp.wait_for("Page.loadEventFired")
            images = cdp.call("Runtime.evaluate", session, returnByValue=True, expression=(
                "Array.from(document.images).map(i => [i.complete && i.naturalWidth > 0, i.src.slice(0, 30)])"))
            pdf = cdp.call("Page.printToPDF", session, printBackground=True)["data"]
            cdp.call("Browser.close")
        finally:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            os.close(to_w)
            os.close(from_r)
    return {"events": cdp.events, "images": images["result"]["value"], "pdf": base64.b64decode(pdf),
            "url": html.resolve().as_uri()}


def test_report_opens_without_console_errors(browser_run):
    errors = [e for e in browser_run["events"] if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") == "error")
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error")]
    assert errors == []


def test_report_makes_no_network_request(browser_run):
    urls = [e["params"]["request"]["url"] for e in browser_run["events"]
            if e.get("method") == "Network.requestWillBeSent"]
    assert browser_run["url"] in urls  # the listener saw the page itself: it was listening
    assert [u[:60] for u in urls if u != browser_run["url"] and not u.startswith("data:")] == []


def test_every_image_is_decoded(browser_run):
    images = browser_run["images"]
    assert len(images) >= 64 + 6
    assert [src for ok, src in images if not ok] == []


def test_print_to_pdf_works(browser_run):
    pdf = browser_run["pdf"]
    assert pdf.startswith(b"%PDF-") and len(pdf) > 50_000
