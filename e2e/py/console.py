"""Drive the Tern console in headless Chromium over the DevTools protocol.

Usage: console.py CHROMIUM BASE_URL TOKEN_FILE OUT_DIR CHECKS_JSON

CHECKS_JSON is a list of {"page": "#/zones", "expect": ["z1", ...]}: each
page is opened after signing in, and passes once its view is rendered
(`main[data-ready]`), its text holds every expected string, and each CSS
selector in its optional "present" list matches an element. A check may
also name a button to "click" (a CSS selector) and strings to expect
"after" the click. A
screenshot of each page is written to OUT_DIR/<name>.png; its step line
counts the chart lines and gives each chart's highest value. Before that, a
wrong token must be refused on the login page, and the API must refuse a
request without the session. Prints one JSON line per step; exits 1 on the
first failure, saying what was seen.
"""

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from websockets.asyncio.client import connect

PATIENCE = float(os.environ.get("TERN_E2E_PATIENCE", "1"))


class Page:
    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0
        self.session = None

    async def call(self, method, params=None, session=True):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        await self.ws.send(json.dumps(msg))
        while True:
            r = json.loads(await self.ws.recv())
            if r.get("id") == self.next_id:
                if "error" in r:
                    raise RuntimeError(f"{method}: {r['error']}")
                return r.get("result", {})

    async def eval(self, expr):
        r = await self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True})
        return r.get("result", {}).get("value")

    async def goto(self, url):
        await self.call("Page.navigate", {"url": url})
        await self.wait("document.readyState === 'complete' && location.href", 15)

    async def wait(self, expr, seconds):
        deadline = time.monotonic() + seconds * PATIENCE
        last = None
        while time.monotonic() < deadline:
            try:
                last = await self.eval(expr)
            except RuntimeError as e:
                last = str(e)
            if last:
                return last
            await asyncio.sleep(0.25)
        return None

    async def screenshot(self, path):
        r = await self.call("Page.captureScreenshot", {"format": "png"})
        with open(path, "wb") as f:
            f.write(base64.b64decode(r["data"]))


def fail(step, why):
    print(json.dumps({"step": step, "ok": False, "why": why}), flush=True)
    sys.exit(1)


def ok(step, **kw):
    print(json.dumps({"step": step, "ok": True, **kw}), flush=True)


async def main():
    chromium, base, token_file, out, checks = sys.argv[1:6]
    token = open(token_file).read().strip()
    checks = json.loads(checks)
    os.makedirs(out, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="tern-chromium-")
    proc = subprocess.Popen(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-dev-shm-usage", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0", f"--user-data-dir={profile}",
         "--window-size=1400,1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ws_url = None
        deadline = time.monotonic() + 30 * PATIENCE
        while time.monotonic() < deadline and ws_url is None:
            line = proc.stderr.readline()
            if not line:
                time.sleep(0.1)
                continue
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            if m:
                ws_url = m.group(1)
        if ws_url is None:
            fail("start", "Chromium did not print its DevTools address")
        async with connect(ws_url, max_size=64 * 1024 * 1024) as ws:
            p = Page(ws)
            target = await p.call("Target.createTarget", {"url": "about:blank"}, session=False)
            att = await p.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}, session=False)
            p.session = att["sessionId"]
            await p.call("Page.enable")
            await p.call("Runtime.enable")
            await p.call("Emulation.setDeviceMetricsOverride",
                         {"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": False})

            # Not signed in: the console sends us to the login page, and the
            # API refuses us.
            await p.goto(base + "/ui/")
            href = await p.eval("location.pathname")
            if href != "/ui/login":
                fail("redirect", f"expected /ui/login, got {href}")
            status = await p.eval("fetch('/api/v1/inspect/zones').then(r => r.status)")
            if status != 401:
                fail("api-without-session", f"expected 401, got {status}")
            ok("signed-out", page=href, api=status)

            # A wrong token is refused with a message.
            await p.eval("document.getElementById('token').value = 'not-the-token'; document.getElementById('login').submit(); true")
            err = await p.wait("document.getElementById('error') && document.getElementById('error').innerText", 15)
            if not err:
                fail("wrong-token", "no error shown for a wrong token")
            await p.screenshot(os.path.join(out, "login-refused.png"))
            ok("wrong-token", error=err)

            # The right one signs in (typed into the form, not in a URL).
            await p.eval(f"document.getElementById('token').value = {json.dumps(token)}; document.getElementById('login').submit(); true")
            where = await p.wait("location.pathname === '/ui/' && document.getElementById('view') && location.pathname", 15)
            if where != "/ui/":
                fail("sign-in", f"still at {await p.eval('location.href')}")
            ok("sign-in")

            # The session cookie alone cannot write: an abort without the
            # page's CSRF token is refused.
            status = await p.eval("fetch('/api/v1/drills/x/abort', {method: 'POST'}).then(r => r.status)")
            if status != 401:
                fail("write-without-csrf", f"expected 401, got {status}")
            ok("write-without-csrf", status=status)

            for c in checks:
                page, expect = c["page"], c["expect"]
                name = c.get("name") or page.strip("#/").replace("/", "-") or "zones"
                await p.eval(f"location.hash = {json.dumps(page)}; true")
                want, present = json.dumps(expect), json.dumps(c.get("present", []))
                text = await p.wait(
                    f"(() => {{ const v = document.getElementById('view');"
                    f" if (!v.dataset.ready) return null;"
                    f" if (!{present}.every(q => v.querySelector(q))) return null;"
                    f" const t = v.innerText; return {want}.every(s => t.includes(s)) ? t : null; }})()",
                    c.get("seconds", 60))
                shot = os.path.join(out, f"{name}.png")
                await p.screenshot(shot)
                if not text:
                    seen = await p.eval("document.getElementById('view').innerText")
                    missing = await p.eval(f"{present}.filter(q => !document.querySelector('#view ' + q))")
                    fail(name, f"expected {expect} and elements {missing} on {page}; the view shows: {seen[:2000]}")
                charts = await p.eval("document.querySelectorAll('#view svg polyline').length")
                maxima = await p.eval("Object.fromEntries([...document.querySelectorAll('#view [data-chart]')]"
                                      ".map(c => [c.dataset.chart, Number(c.dataset.max)]))")
                if c.get("click"):
                    sel = json.dumps(c["click"])
                    clicked = await p.eval(f"(() => {{ const b = document.querySelector({sel}); if (!b) return false; b.click(); return true; }})()")
                    if not clicked:
                        fail(name, f"no {c['click']} to click on {page}")
                    after = json.dumps(c.get("after", []))
                    seen = await p.wait(
                        f"(() => {{ const t = document.getElementById('view').innerText;"
                        f" return {after}.every(s => t.includes(s)) ? t : null; }})()",
                        c.get("seconds", 60))
                    await p.screenshot(os.path.join(out, f"{name}-after.png"))
                    if not seen:
                        now = await p.eval("document.getElementById('view').innerText")
                        fail(name, f"expected {c.get('after')} after clicking {c['click']}; the view shows: {now[:2000]}")
                ok(name, page=page, screenshot=shot, charts=charts, maxima=maxima)
    finally:
        proc.kill()
        proc.wait()


asyncio.run(main())
