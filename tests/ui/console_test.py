#!/usr/bin/env python3
"""The web console in a real browser, against a running `midasflow demo`.

Usage:
    python3 tests/ui/console_test.py --url http://127.0.0.1:P/ui [--screenshot docs/img/console.png]

Drives the system Chromium (/usr/bin/chromium, Debian's package) through Playwright
(PyPI `playwright`, whose own browser downloads are never used). Checks, each under a
deadline: the node table and the hash ring match the cluster; isolating a node that leads
shards moves its leaders away (the time it took is printed) and the fault shows in the
list; heal clears it; at phone width the page does not scroll sideways and the isolate
buttons can be pressed; every fault button is a real <button> reachable with Tab; and the
page raised no JavaScript error. With --screenshot, saves a 1280x800 picture of the
console with the demo's load running and one node isolated, then heals.

Exits 0 and prints a JSON summary (the last line of stdout) on success; exits 1 with
"FAIL: ..." on stderr otherwise.
"""

import argparse
import json
import sys
import time
import urllib.parse
import urllib.request

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
POLL = 0.1  # seconds between checks while waiting for a condition


class Failure(Exception):
    """A check that did not hold: the message says what and what was seen instead."""


def log(message):
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


STARTED = time.monotonic()


def wait_for(what, timeout, probe):
    """Calls probe() until it returns (True, value); at the deadline fails with what was seen.

    probe returns (done, detail): detail is the value when done, else what is still missing.
    """
    deadline = time.monotonic() + timeout
    detail = None
    while True:
        done, detail = probe()
        if done:
            return detail
        if time.monotonic() >= deadline:
            raise Failure(f"timed out after {timeout:g} s waiting for {what}; last seen: {detail}")
        time.sleep(POLL)


def api_get(base, path, timeout=5):
    with urllib.request.urlopen(base + path, timeout=timeout) as resp:
        return json.loads(resp.read().decode("utf-8"))


def try_api_get(base, path):
    try:
        return api_get(base, path), None
    except Exception as e:  # noqa: BLE001 - any failure is reported as what was seen
        return None, f"{path}: {e}"


class ErrorLog:
    """JavaScript errors from a page: uncaught exceptions and console.error lines, except
    Chromium's own "Failed to load resource" network lines for 4xx/5xx answers."""

    def __init__(self):
        self.errors = []
        self.network_lines = 0

    def attach(self, page, label):
        page.on("pageerror", lambda exc: self.errors.append(f"{label}: pageerror: {exc}"))

        def on_console(msg):
            if msg.type != "error":
                return
            if msg.text.startswith("Failed to load resource"):
                self.network_lines += 1
                return
            self.errors.append(f"{label}: console.error: {msg.text}")

        page.on("console", on_console)


# ---------- what the page shows ----------

PAGE_STATE_JS = """() => {
  const arcs = [...document.querySelectorAll('svg#ring path.shard-arc')].map((p) => ({
    shard: p.getAttribute('data-shard-id'), leader: p.getAttribute('data-leader') }));
  const rows = {};
  for (const tr of document.querySelectorAll('table#cluster-nodes tbody tr[data-node-id]')) {
    const cell = (f) => { const c = tr.querySelector(`td[data-field="${f}"]`); return c ? c.textContent.trim() : null; };
    rows[tr.getAttribute('data-node-id')] = { state: cell('state'), leaders: cell('leaders'), replicas: cell('replicas') };
  }
  const faults = [...document.querySelectorAll('ul#faults-list > li')].map((li) => ({
    text: li.textContent.trim(), empty: li.classList.contains('empty') }));
  const lu = document.querySelector('#last-update');
  const errs = document.querySelector('#errors');
  return { arcs, rows, faults, lastUpdate: lu ? lu.textContent.trim() : null,
           errors: errs ? errs.textContent.trim() : '' };
}"""


def page_state(page):
    return page.evaluate(PAGE_STATE_JS)


def brief(st):
    """A short text of the page's state for failure messages."""
    arcs = ",".join(f"{a['shard']}:{a['leader'] or '-'}" for a in st["arcs"])
    rows = "; ".join(f"N{k} {v['state']} leads {v['leaders']} holds {v['replicas']}" for k, v in sorted(st["rows"].items()))
    faults = " | ".join(f["text"] for f in st["faults"])
    out = f"arcs(shard:leader)=[{arcs}] rows=[{rows}] faults=[{faults}] updated={st['lastUpdate']}"
    if st["errors"]:
        out += f" #errors={st['errors']!r}"
    return out


def open_console(browser, url, viewport, errors, label):
    context = browser.new_context(viewport=viewport, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors.attach(page, label)
    page.goto(url, wait_until="load", timeout=20_000)
    return context, page


def wait_populated(page, base, what_prefix=""):
    """Three node rows, one arc per shard (as many as /v1/shards lists), a poll done, and the
    demo's fault panel shown. Returns the shard count."""

    def probe():
        st = page_state(page)
        shards, err = try_api_get(base, "/v1/shards")
        if shards is None:
            return False, err
        want = len(shards.get("shards", []))
        panel = page.locator("section#faults").is_visible()
        ok = (len(st["rows"]) == 3 and want > 0 and len(st["arcs"]) == want
              and st["lastUpdate"] not in (None, "", "never") and panel)
        return (True, want) if ok else (False, f"/v1/shards lists {want} shards; faults panel visible={panel}; {brief(st)}")

    return wait_for(f"{what_prefix}3 node rows and one ring arc per shard", 20, probe)


def wait_all_led(page, timeout=20):
    def probe():
        st = page_state(page)
        ok = bool(st["arcs"]) and all(a["leader"] for a in st["arcs"])
        return (True, st) if ok else (False, brief(st))

    return wait_for("every ring arc to show a leader (non-empty data-leader)", timeout, probe)


def wait_faults_clear(page, timeout=15):
    def probe():
        st = page_state(page)
        f = st["faults"]
        return (len(f) == 1 and f[0]["empty"], brief(st))

    wait_for("#faults-list to hold only li.empty", timeout, probe)


def leads(st, node):
    """How many shards the page shows `node` leading (ring arcs), and its leaders cell."""
    arcs = sum(1 for a in st["arcs"] if a["leader"] == str(node))
    cell = st["rows"].get(str(node), {}).get("leaders")
    return arcs, cell


def pick_victim(page, served_by):
    """Node 2 or 3 (not the node serving the page) that leads at least one shard."""
    candidates = [n for n in (2, 3) if n != served_by]

    def probe():
        st = page_state(page)
        for n in candidates:
            arcs, cell = leads(st, n)
            if arcs > 0 or (cell not in (None, "", "–", "0")):
                return True, n
        return False, f"none of nodes {candidates} leads a shard: {brief(st)}"

    return wait_for(f"one of nodes {candidates} to lead a shard", 30, probe)


def isolate_and_watch(page, base, node, timeout=15):
    """Clicks Isolate for `node`; waits until its leaders moved and the fault is listed.
    Returns (seconds until the page showed no shard led by it, same as seen by /v1/shards)."""
    button = page.locator(f'button[data-action="isolate"][data-node="{node}"]')
    t0 = time.monotonic()
    button.click()
    log(f"clicked Isolate node {node}")
    moved_page = None
    moved_api = None
    listed = False

    def probe():
        nonlocal moved_page, moved_api, listed
        now = time.monotonic() - t0
        st = page_state(page)
        arcs, cell = leads(st, node)
        # In one sample: the isolated node leads nothing and every shard shows a leader.
        all_led = bool(st["arcs"]) and all(a["leader"] for a in st["arcs"])
        if moved_page is None and arcs == 0 and cell == "0" and all_led:
            moved_page = now
        if moved_api is None:
            shards, _ = try_api_get(base, "/v1/shards")
            if shards is not None and shards.get("shards") and all(
                    s.get("leader") is not None and s.get("leader") != node for s in shards["shards"]):
                moved_api = now
        listed = any(f["text"] == f"node {node} isolated" or f"node {node} isolated" in f["text"] for f in st["faults"])
        done = moved_page is not None and moved_api is not None and listed
        return done, (f"arcs led by N{node}: {arcs}, its leaders cell: {cell!r}, "
                      f"'node {node} isolated' listed: {listed}; {brief(st)}")

    wait_for(f"node {node}'s leaders to move away and 'node {node} isolated' in #faults-list", timeout, probe)
    return moved_page, moved_api


def click_heal(page):
    page.locator('#faults button[data-action="heal"]').click()
    log("clicked Heal all")
    wait_faults_clear(page)


# ---------- keyboard ----------

FAULT_BUTTONS_JS = """() => [...document.querySelectorAll('#faults [data-action]')].map((el, i) => {
  el.setAttribute('data-kbd-probe', String(i));
  return { probe: String(i), tag: el.tagName, type: el.getAttribute('type'), action: el.dataset.action,
           node: el.dataset.node || null, disabled: !!el.disabled, tabIndex: el.tabIndex,
           label: el.getAttribute('aria-label') || el.textContent.trim() };
})"""


def check_keyboard(page):
    """Every fault control is a real <button>; every enabled one is reached by Tab alone.
    (A disabled button is out of the tab order by design: Restart while no node crashed.)"""
    buttons = page.evaluate(FAULT_BUTTONS_JS)
    if not buttons:
        raise Failure("no fault buttons (#faults [data-action]) on the page")
    not_buttons = [b for b in buttons if b["tag"] != "BUTTON" or b["type"] != "button"]
    if not_buttons:
        raise Failure(f"fault controls that are not <button type=button>: {not_buttons}")
    expected = {"isolate", "crash", "restart", "heal", "cut", "load"}
    actions = {b["action"] for b in buttons}
    if not expected <= actions:
        raise Failure(f"fault buttons missing: {sorted(expected - actions)} (found {sorted(actions)})")
    enabled = {b["probe"]: b for b in buttons if not b["disabled"]}
    negative = [b for b in enabled.values() if b["tabIndex"] < 0]
    if negative:
        raise Failure(f"fault buttons taken out of the tab order (tabindex < 0): {negative}")
    # Walk the page with Tab from the top and note which fault buttons take focus.
    page.evaluate("() => { if (document.activeElement) document.activeElement.blur(); window.scrollTo(0, 0); }")
    reached = set()
    stops = 0
    for _ in range(400):
        page.keyboard.press("Tab")
        stops += 1
        # [probe mark of the focused element, whether focus came back to the first stop]
        probe, wrapped = page.evaluate("""(first) => { const a = document.activeElement;
            if (first) window.__kbdFirstStop = a;
            return [a ? a.getAttribute('data-kbd-probe') : null,
                    !first && a === window.__kbdFirstStop]; }""", stops == 1)
        if probe is not None:
            reached.add(probe)
        if wrapped or set(enabled) <= reached:
            break
    missing = [enabled[p] for p in enabled if p not in reached]
    if missing:
        raise Failure(f"fault buttons not reached with Tab ({stops} presses): {missing}")
    disabled = sorted(f"{b['action']} {b['node'] or ''}".strip() for b in buttons if b["disabled"])
    page.evaluate("() => document.querySelectorAll('[data-kbd-probe]').forEach((el) => el.removeAttribute('data-kbd-probe'))")
    return {"fault_buttons": len(buttons), "reached_by_tab": len(reached), "tab_presses": stops,
            "disabled_now": disabled}


# ---------- phone width ----------

def check_phone(browser, url, base, errors):
    context, page = open_console(browser, url, PHONE, errors, "phone")
    try:
        wait_populated(page, base, "phone: ")
        wait_all_led(page)

        def probe():
            m = page.evaluate("() => ({ sw: document.documentElement.scrollWidth, iw: window.innerWidth })")
            return m["sw"] <= m["iw"] + 1, m

        # Polled for a moment: a table row can still be arriving.
        metrics = wait_for("no horizontal scroll at document level at 390 px "
                           "(documentElement.scrollWidth <= innerWidth + 1)", 5, probe)
        isolate = page.locator('button[data-action="isolate"]')
        count = isolate.count()
        if count != 3:
            raise Failure(f"phone: expected 3 Isolate buttons, found {count}")
        for i in range(count):
            b = isolate.nth(i)
            b.scroll_into_view_if_needed()
            if not b.is_visible():
                raise Failure(f"phone: Isolate button {i + 1} is not visible")
            box = b.bounding_box()
            if box is None or box["x"] < 0 or box["x"] + box["width"] > PHONE["width"] + 1:
                raise Failure(f"phone: Isolate button {i + 1} is outside the 390 px viewport: {box}")
            if box["width"] < 24 or box["height"] < 24:
                raise Failure(f"phone: Isolate button {i + 1} is too small to tap: {box}")
            b.click(trial=True, timeout=5_000)  # actionable: visible, stable, enabled, not covered
        return {"scroll_width": metrics["sw"], "inner_width": metrics["iw"], "isolate_buttons": count}
    finally:
        context.close()


# ---------- screenshot ----------

def take_screenshot(page, base, node, path):
    """The console at 1280x800 with the demo's load on and node `node` isolated."""
    faults = api_get(base, "/v1/demo/faults")
    if not (faults.get("load") or {}).get("enabled"):
        page.locator('#faults button[data-action="load"]').click()
        wait_for("the client load to switch on", 10,
                 lambda: ((api_get(base, "/v1/demo/faults").get("load") or {}).get("enabled") is True, "load still off"))
    isolate_and_watch(page, base, node)

    # The picture must tell the story: the isolated node leads nothing (a leadership move
    # started before the fault can land on it first), every shard has a leader, its load
    # stalled and the others' writing.
    def probe():
        rates = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('#faults-nodes li[data-node-id]')]
            .map((li) => [li.dataset.nodeId, li.querySelector('.load-rate').textContent.trim()]))""")
        st = page_state(page)
        arcs, cell = leads(st, node)
        ok = (len(rates) == 3 and all(
            r.startswith("stalled") if n == str(node) else (r.endswith("ok/s") and not r.startswith("stalled"))
            for n, r in rates.items())
            and arcs == 0 and cell == "0" and all(a["leader"] for a in st["arcs"])
            and any(f"node {node} isolated" in f["text"] for f in st["faults"]))
        return ok, f"load rates {rates}; {brief(st)}"

    wait_for(f"node {node} isolated, leading nothing, its load stalled and the others' writing", 20, probe)
    page.evaluate("() => { if (document.activeElement) document.activeElement.blur(); window.scrollTo(0, 0); }")
    page.mouse.move(0, 0)
    page.screenshot(path=path, full_page=False)
    log(f"screenshot saved: {path}")
    click_heal(page)


# ---------- main ----------

def run(args):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        raise Failure(f"{e}: install it with `python3 -m pip install playwright==1.65.2` "
                      "(bash .ci/run does; the browser is Debian's chromium, not Playwright's)") from e

    parsed = urllib.parse.urlsplit(args.url)
    base = f"{parsed.scheme}://{parsed.netloc}"
    cluster = api_get(base, "/v1/cluster")
    served_by = cluster.get("node_id")
    summary = {"url": args.url, "served_by": served_by}
    errors = ErrorLog()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        summary["browser"] = f"chromium {browser.version}"
        try:
            context, page = open_console(browser, args.url, DESKTOP, errors, "desktop")
            log(f"loaded {args.url} at 1280x800 ({summary['browser']})")
            shards = wait_populated(page, base)
            summary["shards"] = shards
            log(f"3 node rows, {shards} ring arcs (= /v1/shards)")
            wait_all_led(page)
            log("every arc has a leader")
            summary["keyboard"] = check_keyboard(page)
            log(f"keyboard: {summary['keyboard']}")

            node = pick_victim(page, served_by)
            st = page_state(page)
            summary["isolated_node"] = node
            summary["shards_led_before"] = leads(st, node)[0]
            log(f"node {node} leads {summary['shards_led_before']} shard(s): isolating it")
            moved_page, moved_api = isolate_and_watch(page, base, node)
            summary["leaders_moved_secs"] = round(moved_page, 2)
            summary["leaders_moved_api_secs"] = None if moved_api is None else round(moved_api, 2)
            log(f"leaders moved off node {node} in {moved_page:.2f} s as the page showed it"
                + ("" if moved_api is None else f" ({moved_api:.2f} s by /v1/shards)"))
            click_heal(page)
            log("healed: #faults-list is empty")
            wait_all_led(page)

            if args.screenshot:
                take_screenshot(page, base, node, args.screenshot)
                summary["screenshot"] = args.screenshot
                wait_all_led(page)
            context.close()

            summary["phone"] = check_phone(browser, args.url, base, errors)
            log(f"phone width: {summary['phone']}")
        finally:
            browser.close()
    if errors.errors:
        raise Failure("JavaScript errors on the page:\n  " + "\n  ".join(errors.errors))
    summary["network_error_lines_ignored"] = errors.network_lines
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the console, e.g. http://127.0.0.1:7001/ui")
    parser.add_argument("--screenshot", help="save a 1280x800 PNG of the console with a fault in force here")
    args = parser.parse_args()
    try:
        summary = run(args)
    except Failure as e:
        print(f"FAIL: {e}", file=sys.stderr, flush=True)
        return 1
    except Exception as e:  # noqa: BLE001 - a browser or network failure is a failure too
        print(f"FAIL: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    print(json.dumps(summary, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
