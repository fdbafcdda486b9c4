#!/usr/bin/env python3
"""Browser test of the operator dashboard (node/src/dashboard/), end to end.

Starts a 3-node devnet, makes a proposal, opens the dashboard in headless Chromium through a
one-time `kosctl dashboard` link, and checks: the sign-in code leaves the URL; the proposal's
tally updates live when another node votes; voting and commenting from the page work and reach
the other nodes; a sign-in link works once; the login form takes the API token; a session can
neither propose nor export; the page fits a 390 px phone; no console error or CSP violation.

    KOSD=… KOSCTL=… python3 tests/browser/dashboard.py

Binaries: $KOSD / $KOSCTL, else $CARGO_TARGET_DIR/debug/, else <repo>/target/debug/.
Screenshots and the devnet log go to $KOS_ARTIFACTS (default <repo>/target/browser-artifacts/).
The page is the binary's embedded copy unless KOS_DASHBOARD_DIR is set in the environment.
Needs Python 3.11 with Playwright and a Chromium ($CHROMIUM, default /usr/bin/chromium).
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kos_support import REPO, Failure, artifacts_dir, binary  # noqa: E402

TOTAL_BUDGET_S = 300  # the whole script
WAIT_S = 60  # any single wait
STARTED = time.monotonic()
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TRUST_WEIGHT = {"core": 5000, "trusted": 3000, "standard": 1000, "sandbox": 500, "quarantine": 0}


def ok(msg):
    print(f"ok: {msg}", flush=True)


def remaining():
    return TOTAL_BUDGET_S - (time.monotonic() - STARTED)


def wait_for(what, fn, timeout=WAIT_S, interval=0.3):
    """Polls fn until it returns something truthy (exceptions count as not yet)."""
    end = time.monotonic() + min(timeout, max(remaining(), 1))
    last = None
    while time.monotonic() < end:
        try:
            value = fn()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - keep polling, report the last one
            last = e
        time.sleep(interval)
    raise Failure(f"timed out waiting for {what}" + (f" (last error: {last})" if last else ""))


class Devnet:
    """`kosd devnet 3` in its own process group, its output copied to a log file."""

    def __init__(self, kosd, kosctl, data, log_path):
        self.kosctl_bin, self.data = kosctl, data
        self.lines, self.ready = [], threading.Event()
        self.log = open(log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen([str(kosd), "--data-dir", str(data), "devnet", "3"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, env=self.env())
        threading.Thread(target=self._drain, daemon=True).start()

    @staticmethod
    def env():
        env = dict(os.environ)
        for k in ("KOS_API_ADDR", "KOS_API_TOKEN", "KOS_DATA_DIR"):
            env.pop(k, None)
        return env

    def _drain(self):
        for line in self.proc.stdout:
            self.log.write(line)
            self.log.flush()
            self.lines.append(line)
            if line.startswith("devnet:"):
                self.ready.set()

    def node(self, i):
        return self.data / "devnet" / f"node-{i}"

    def kosctl(self, i, *args, json_out=True):
        cmd = [str(self.kosctl_bin), "--data-dir", str(self.node(i))] + (["--json"] if json_out else []) + list(args)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=self.env())
        if r.returncode != 0:
            raise Failure(f"kosctl {' '.join(args)} on node-{i}: {r.stderr.strip() or r.stdout.strip()}")
        return json.loads(r.stdout) if json_out else r.stdout

    def api(self, i, path):
        addr = (self.node(i) / "api.addr").read_text().strip()
        token = (self.node(i) / "api.token").read_text().strip()
        assert addr.startswith("127.0.0.1:"), addr
        req = urllib.request.Request(f"http://{addr}{path}", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read().decode()

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left in the group
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        self.log.close()


def metrics(net):
    """node-0's /metrics as {name or name{labels}: value}."""
    out = {}
    for line in net.api(0, "/metrics").splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


class Console:
    """Console errors and page errors of every page, but for the expected refusals: a browser
    logs every 4xx answer, so those the test provokes are listed (page, status, URL path)."""

    def __init__(self):
        self.errors, self.allowed = [], []

    def allow(self, page_name, status, path_regex):
        self.allowed.append((page_name, f"status of {status}", path_regex))

    def watch(self, page, name):
        def on_console(m):
            if m.type != "error":
                return
            url = (m.location or {}).get("url", "")
            if not any(n == name and t in m.text and re.search(p, url) for n, t, p in self.allowed):
                self.errors.append(f"[{name}] {m.text} ({url})")
        page.on("console", on_console)
        page.on("pageerror", lambda e: self.errors.append(f"[{name}] page error: {e}"))

    def check(self, where):
        if self.errors:
            raise Failure(f"browser errors {where}: " + " | ".join(self.errors))


def bar_total(page, label="yes"):
    return int(page.get_attribute(f"[data-testid=bar-{label}]", "data-total", timeout=10_000))


def wait_bar(page, what, pred, label="yes"):
    return wait_for(what, lambda: (lambda t: t if pred(t) else None)(bar_total(page, label)))


def run(net, artifacts):
    from playwright.sync_api import sync_playwright

    wait_for("the devnet to start", net.ready.is_set)
    ok("devnet started: " + net.lines[0].strip())
    wait_for("node-0 to see 2 peers", lambda: len(net.kosctl(0, "status")["peers"]) >= 2)
    ok("node-0 is connected to 2 peers")
    fed = wait_for("the federation on node-0", lambda: net.kosctl(0, "federation", "show"))
    trust = {m["did"]: m["trust"] for m in fed["members"]}
    member = [net.kosctl(i, "status")["member"] for i in range(3)]

    pid = net.kosctl(0, "propose", "--kind", "configuration", "--title", "Raise the relay quota",
                     "--description", "Doubles it.\nPeak use was 110 last week.", "--key", "relay.quota",
                     "--value", "120", "--discussion-secs", "1", "--voting-secs", "600")["id"]
    for i in range(3):
        wait_for(f"the proposal to be voting on node-{i}", lambda i=i: net.kosctl(i, "show", pid)["status"] == "voting")
    ok(f"proposal {pid[:12]}… is voting on all three nodes")
    weighting = net.kosctl(0, "show", pid)["voting"]["weighting"]

    before = metrics(net)
    ok(f"scraped node-0 /metrics ({len(before)} series)")

    link = net.kosctl(0, "dashboard")["url"]
    assert link.startswith("http://127.0.0.1:") and "#code=" in link, link
    console = Console()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                                     headless=True, args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context(viewport={"width": 1280, "height": 800})
            page = ctx.new_page()
            page.set_default_timeout(30_000)
            console.watch(page, "main")

            page.goto(link)
            page.wait_for_selector("[data-testid=node-status] >> text=/2 peers/")
            if "code=" in page.url:
                raise Failure(f"the sign-in code is still in the URL: {page.url}")
            ok(f"signed in with the one-time link; the URL is now {page.url}")

            page.click("#nav a[data-route=proposals]")
            page.click(f"[data-testid=proposal-link][data-id='{pid}']")
            page.wait_for_selector("[data-testid=proposal-title] >> text=Raise the relay quota")
            yes0 = bar_total(page)
            ok(f"opened the proposal from the list; yes = {yes0}")
            page.evaluate("window.__sameDocument = true")

            net.kosctl(1, "vote", pid, "yes", json_out=False)
            w1 = TRUST_WEIGHT[trust[member[1]]] if weighting == "trust" else None
            yes1 = wait_bar(page, "node-1's vote on the page", lambda t: t > yes0)
            if w1 is not None and yes1 - yes0 != w1:
                raise Failure(f"yes grew by {yes1 - yes0}, node-1 weighs {w1}")
            if not page.evaluate("window.__sameDocument === true"):
                raise Failure("the page reloaded")
            ok(f"node-1 voted with kosctl; the yes bar grew {yes0} → {yes1} without a reload")

            page.click("[data-testid=vote-yes]")
            page.wait_for_selector("[data-testid=vote-result] >> text=/recorded/i")
            w0 = TRUST_WEIGHT[trust[member[0]]] if weighting == "trust" else None
            yes2 = wait_bar(page, "node-0's vote on the page", lambda t: t > yes1)
            if w0 is not None and yes2 - yes1 != w0:
                raise Failure(f"yes grew by {yes2 - yes1}, node-0 weighs {w0}")
            ok(f"voted yes from the page: \"{page.inner_text('[data-testid=vote-result]')}\"; yes {yes1} → {yes2}")
            t2 = wait_for("both votes on node-2", lambda: (lambda t: t if t["tally"] and t["tally"]["totals"][0] == yes2 else None)(net.kosctl(2, "tally", pid)))
            ok(f"node-2 counts both: yes = {t2['tally']['totals'][0]}, {t2['tally']['counted']} ballots")

            text = f"Browser check {int(time.time())}: <b>not bold</b>"
            page.fill("[data-testid=comment-text]", text)
            page.click("[data-testid=comment-submit]")
            page.wait_for_selector("[data-testid=comment-result] >> text=/posted/i")
            comment = page.locator("[data-testid=comment]", has_text=text)
            comment.wait_for()
            if page.locator("[data-testid=thread] b").count():
                raise Failure("comment text was parsed as HTML")
            comment.get_by_role("button", name=re.compile("Reply")).click()
            page.fill("[data-testid=comment-text]", "A reply from the browser")
            page.click("[data-testid=comment-submit]")
            reply = page.locator("[data-testid=comment].depth-1", has_text="A reply from the browser")
            reply.wait_for()
            ok("posted a comment and a threaded reply from the page")
            wait_for("the comment on node-1", lambda: any(c["text"] == text for c in net.kosctl(1, "show", pid)["discussion"]))
            ok("node-1 has the comment")

            # The federation page lists every proposal type's voting rules, as kosctl does.
            page.evaluate("location.hash = '#/federation'")
            page.wait_for_selector("[data-testid=voting-table] tbody tr")
            rows = page.locator("[data-testid=voting-table] tbody tr")
            expected = len(net.kosctl(0, "federation", "show")["voting"])
            if rows.count() != expected or expected != 10:
                raise Failure(f"voting rules: {rows.count()} rows on the page, {expected} from the API")
            alloc = rows.filter(has_text="Resource allocation").inner_text()
            if "Simple majority" not in alloc or "rule, weighting" not in alloc.lower():
                raise Failure(f"resource allocation's rules: {alloc!r}")
            ok("the federation page lists the voting rules of all 10 proposal types")

            # A secret ballot from the page: committed, sealed (nothing counted), then revealed by
            # the node when voting ends and counted.
            sid = net.kosctl(0, "propose", "--kind", "configuration", "--title", "Sealed limit",
                             "--description", "A secret ballot.", "--key", "limit", "--value", "3",
                             "--secret", "--discussion-secs", "1", "--voting-secs", "12")["id"]
            wait_for("the secret ballot to open", lambda: net.kosctl(0, "show", sid)["status"] == "voting")
            page.evaluate("r => { location.hash = r }", "#/proposal/" + sid)
            page.wait_for_selector("[data-testid=proposal-title] >> text=Sealed limit")
            page.click("[data-testid=vote-yes]")
            page.wait_for_selector("[data-testid=vote-result] >> text=/committed/i")
            page.wait_for_selector("[data-testid=secret-progress] >> text=/1 committed · 0 revealed/")
            if net.kosctl(0, "tally", sid)["tally"]["participation"] != 0:
                raise Failure("a secret ballot was counted before its reveal")
            ok("secret ballot from the page: committed, nothing counted before the reveal")
            page.wait_for_selector("[data-testid=secret-progress] >> text=/1 committed · 1 revealed/", timeout=60_000)
            counted = wait_for("the revealed ballot counted", lambda: (lambda t: t if t["tally"]["counted"] == 1 else None)(net.kosctl(2, "tally", sid)))
            ok(f"node-0 revealed it by itself when voting ended; node-2 counts {counted['tally']['counted']} ballot")
            page.evaluate("location.hash = '#/proposal/" + pid + "'")
            page.wait_for_selector("[data-testid=bar-yes]")

            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(artifacts / "dashboard-desktop.png"))
            page.set_viewport_size({"width": 390, "height": 844})
            page.wait_for_timeout(300)
            for route in ("#/proposal/" + pid, "#/", "#/proposals", "#/federation", "#/peers", "#/audit"):
                page.evaluate("r => { location.hash = r }", route)
                page.wait_for_selector("#view h1:not(:empty)")
                page.wait_for_timeout(700)
                width = page.evaluate("document.documentElement.scrollWidth")
                if width > 390:
                    raise Failure(f"{route} overflows at 390 px: scrollWidth {width}")
                if route.startswith("#/proposal/"):
                    page.wait_for_selector("[data-testid=bar-yes]")
                    page.screenshot(path=str(artifacts / "dashboard-phone.png"), full_page=True)
            small = page.evaluate("""() => [...document.querySelectorAll('button, #nav a, [data-testid=proposal-link]')]
                .filter(e => e.offsetParent).map(e => e.getBoundingClientRect()).filter(r => r.height < 44).length""")
            if small:
                raise Failure(f"{small} tap targets lower than 44 px at 390 px")
            page.click("#nav-toggle")
            page.wait_for_selector("#nav a[data-route=peers]", state="visible")
            page.click("#nav a[data-route=peers]")
            page.wait_for_selector("[data-testid=view-title] >> text=Peers")
            ok("390 px: no horizontal overflow on any view, tap targets ≥ 44 px, the menu works")

            page.set_viewport_size({"width": 1280, "height": 800})
            page.evaluate("location.hash = '#/'")
            page.wait_for_selector("[data-testid=view-title] >> text=Overview")
            page.wait_for_selector("[data-testid=proposal-link]")
            page.wait_for_timeout(500)
            page.screenshot(path=str(artifacts / "dashboard-overview-desktop.png"))
            ok("screenshots saved in " + str(artifacts))

            # What a session must not do: the node answers 403 (the browser logs those).
            for path in ("/v1/proposals$", "/v1/export$", "/v1/block$"):
                console.allow("main", 403, path)
            codes = page.evaluate("""async () => {
                const auth = { Authorization: 'Bearer ' + sessionStorage.getItem('kos.session') };
                const propose = await fetch('/v1/proposals', { method: 'POST', headers: { ...auth, 'Content-Type': 'application/json' },
                    body: JSON.stringify({ kind: 'configuration', title: 'x', key: 'a', value: 'b' }) });
                const exp = await fetch('/v1/export', { headers: auth });
                const block = await fetch('/v1/block', { method: 'POST', headers: { ...auth, 'Content-Type': 'application/json' }, body: '{"peer":"x"}' });
                return [propose.status, exp.status, block.status];
            }""")
            if codes != [403, 403, 403]:
                raise Failure(f"a session token could propose/export/block: {codes}")
            ok("the session token gets 403 for POST /v1/proposals, GET /v1/export, POST /v1/block")
            console.check("in the signed-in page")

            # The same link a second time: the login form with the node's error.
            ctx2 = browser.new_context(viewport={"width": 1280, "height": 800})
            page2 = ctx2.new_page()
            page2.set_default_timeout(30_000)
            console.watch(page2, "second")
            console.allow("second", 401, "/v1/session$")
            page2.goto(link)
            page2.wait_for_selector("[data-testid=login-error] >> text=/unknown, used or expired/")
            page2.wait_for_selector("[data-testid=login-token]", state="visible")
            if "code=" in page2.url:
                raise Failure("a refused code stays in the URL")
            ok("the one-time link does not work twice: " + page2.inner_text("[data-testid=login-error]"))
            page2.fill("[data-testid=login-token]", (net.node(0) / "api.token").read_text().strip())
            page2.click("[data-testid=login-submit]")
            page2.wait_for_selector("[data-testid=node-status] >> text=/peers/")
            page2.wait_for_selector("[data-testid=view-title] >> text=Overview")
            ok("signed in with the API token through the login form")
            token2 = page2.evaluate("sessionStorage.getItem('kos.session')")
            page2.click("[data-testid=sign-out]")
            page2.wait_for_selector("[data-testid=login-token]", state="visible")
            console.allow("second", 401, "/v1/status$")
            status = page2.evaluate("t => fetch('/v1/status', { headers: { Authorization: 'Bearer ' + t } }).then(r => r.status)", token2)
            if status != 401:
                raise Failure(f"a signed-out session still reads: {status}")
            ok("signing out ends the session (401 afterwards)")
            console.check("in the pages")
            ctx2.close()
            ctx.close()
        finally:
            browser.close()
    ok("no console error, page error or CSP violation")

    after = metrics(net)
    grew = {k: (before.get(k, 0), after[k]) for k in ("kos_stored_messages", "kos_local_messages_total")
            if k in after}
    if len(grew) != 2 or any(b >= a for b, a in grew.values()):
        raise Failure(f"node-0 metrics did not move: {grew}")
    accepted = 'kos_gossip_messages_total{verdict="accept"}'
    ok("metrics moved: " + ", ".join(f"{k} {int(b)} → {int(a)}" for k, (b, a) in grew.items())
       + f", {accepted} {int(before.get(accepted, 0))} → {int(after.get(accepted, 0))}")


def on_alarm(_sig, _frame):
    raise Failure(f"the test ran over its {TOTAL_BUDGET_S} s budget")


def main():
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TOTAL_BUDGET_S)
    kosd, kosctl = binary("kosd"), binary("kosctl")
    for b in (kosd, kosctl):
        if not b.is_file():
            print(f"FAIL: no binary at {b} (set KOSD / KOSCTL or build first)", file=sys.stderr)
            return 2
    artifacts = artifacts_dir("browser-artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    assets = os.environ.get("KOS_DASHBOARD_DIR")
    print(f"dashboard test: {kosd}, assets {'from ' + assets if assets else 'embedded'}", flush=True)
    with tempfile.TemporaryDirectory(prefix="kos-dash-") as tmp:
        net = Devnet(kosd, kosctl, Path(tmp), artifacts / "devnet.log")
        try:
            run(net, artifacts)
        except Failure as e:
            print(f"FAIL: {e}", file=sys.stderr)
            return 1
        except Exception as e:  # noqa: BLE001 - a Playwright timeout or assertion: fail clearly
            print(f"FAIL: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        finally:
            signal.alarm(0)
            net.stop()
    print(f"PASS: dashboard browser test in {time.monotonic() - STARTED:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
