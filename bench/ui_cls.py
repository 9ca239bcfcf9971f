"""Cumulative Layout Shift of the UI's first load, desktop and phone, in the system
Chromium: what Lighthouse's CLS measures (the largest session window of
`layout-shift` entries without recent input: shifts less than 1 s apart, at most
5 s long), read from the page's own PerformanceObserver.

    python -m bench.ui_cls [--url http://127.0.0.1:7860/] [--runs 3]

Without --url it starts a server of its own (tiny model, a temp cache). Prints one
line per viewport: the CLS of each run and the shifted elements of the worst.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.browsers import chromium
from bench.procs import Server

# Lighthouse's default viewports: desktop 1350x940, mobile (Moto G Power) 412x823.
VIEWPORTS = {"desktop": (1350, 940, False), "phone": (412, 823, True)}
SETTLE_MS = 4000  # after Generate is drawn: what still moves in this time is counted

OBSERVE = """
window.__shifts = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    window.__shifts.push({
      value: e.value, time: e.startTime, input: e.hadRecentInput,
      sources: (e.sources || []).map((s) => {
        const n = s.node;
        return n ? String(n.id || (n.getAttribute && n.getAttribute("class")) || n.nodeName).slice(0, 60) : "?";
      }),
    });
  }
}).observe({ type: "layout-shift", buffered: true });
"""

SESSION_CLS = """() => {
  let best = 0, sum = 0, start = -1, last = -1, worst = [], current = [];
  for (const s of window.__shifts.filter((s) => !s.input)) {
    if (start < 0 || s.time - last > 1000 || s.time - start > 5000) { sum = 0; start = s.time; current = []; }
    sum += s.value; last = s.time; current.push(...s.sources);
    if (sum > best) { best = sum; worst = [...current]; }
  }
  return [best, worst];
}"""


def measure(url: str, runs: int) -> None:
    with chromium() as browser:
        for name, (width, height, mobile) in VIEWPORTS.items():
            values, worst = [], []
            for _ in range(runs):
                context = browser.new_context(
                    viewport={"width": width, "height": height}, is_mobile=mobile, has_touch=mobile
                )
                page = context.new_page()
                page.add_init_script(OBSERVE)
                page.goto(url)
                page.locator("#generate").wait_for()
                page.wait_for_timeout(SETTLE_MS)
                cls, sources = page.evaluate(SESSION_CLS)
                values.append(cls)
                if cls >= max(values):
                    worst = sources
                context.close()
            shown = ", ".join(f"{v:.3f}" for v in values)
            print(
                f"{name} {width}x{height}: CLS {shown} (worst run's shifted elements: {sorted(set(worst))})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.url:
        measure(args.url, args.runs)
        return
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "cache").wait_ready()
        try:
            measure(server.url, args.runs)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
