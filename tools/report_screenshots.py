"""Screenshots of a report at a phone's and a laptop's width, in headless Chromium.

    python tools/report_screenshots.py runs/reproduce-mnist-quick/report.html docs/

Writes ``report-390.png`` and ``report-1280.png`` (the top of the page, 2,400 px tall) and
prints, per width, whether the page fits without sideways scrolling and whether the first
RQ1 table's strong and adaptive columns are visible without scrolling the table.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

VISIBLE = """
const table = [...document.querySelectorAll('table')].find(
    t => t.querySelector('th') && t.innerText.includes('strong attack, defensive'));
const heads = [...table.querySelectorAll('th')].filter(
    th => /strong attack|adaptive attack/.test(th.innerText));
return heads.map(th => [th.innerText, th.getBoundingClientRect().right <= window.innerWidth]);
"""


def browser(width: int, height: int = 2400) -> webdriver.Chrome:
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--hide-scrollbars", f"--window-size={width},{height}"):  # fmt: skip
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def main() -> int:
    report, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    for width in (390, 1280):
        driver = browser(width)
        try:
            driver.get(report.as_uri())
            overflow = driver.execute_script(
                "return document.documentElement.scrollWidth > window.innerWidth + 1"
            )
            visible = driver.execute_script(VISIBLE)
            driver.save_screenshot(str(out / f"report-{width}.png"))
        finally:
            driver.quit()
        print(f"{width} px: page overflows sideways: {overflow}; visible without scrolling: "
              + ", ".join(f"{name!r} {ok}" for name, ok in visible))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
