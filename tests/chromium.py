"""Headless Chromium for the browser tests (the playground page, the documentation site): find it, and start it
with the DevTools protocol on."""

import asyncio
import contextlib
import shutil
from pathlib import Path


def find_chromium():
    """The path of a Chromium (or Chrome) binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@contextlib.asynccontextmanager
async def devtools_port(browser, user_data_dir, *flags, wait_s=30):
    """Headless Chromium on about:blank, killed on exit; yields the port of its DevTools protocol."""
    proc = await asyncio.create_subprocess_exec(
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", *flags,
        f"--user-data-dir={user_data_dir}", "--remote-debugging-port=0", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        port_file = Path(user_data_dir) / "DevToolsActivePort"  # Chromium writes its debugging port here
        for _ in range(int(wait_s * 10)):
            if port_file.is_file() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.1)
        yield port_file.read_text().split()[0]
    finally:
        proc.kill()
        await proc.wait()
