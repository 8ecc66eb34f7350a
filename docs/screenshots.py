"""Retakes the screenshots docs/ shows, from a running Dagster UI over `make demo`'s instance:

    make demo && make ui &          # then, once the UI answers:
    .venv/bin/python docs/screenshots.py [http://127.0.0.1:3000]

Drives Debian's chromium (`apt-get install chromium`) with Playwright; never downloads a browser."""

import shutil
import sys
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

DOCS = Path(__file__).resolve().parent
LOCATION = "pipelines.definitions"


def main(base: str) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", headless=True)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(120_000)
        page.goto(f"{base}/locations/{LOCATION}/asset-groups/data")
        expect(page.get_by_text("cleaned_batch").first).to_be_visible()
        page.wait_for_timeout(2000)  # let the graph settle
        page.screenshot(path=str(DOCS / "ui-asset-graph.png"))
        page.goto(f"{base}/assets/cleaned_batch?view=partitions")
        page.get_by_text("batch-0001").first.click()
        expect(page.get_by_text("records_per_second").first).to_be_visible()
        page.wait_for_timeout(1500)
        page.screenshot(path=str(DOCS / "ui-partitions.png"))
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:3000")
