"""The chat page in a real browser: starts a stack with the integration
harness, then runs chat.test.mjs (playwright-core driving Debian's headless
Chromium) against the edge, which serves the page at `/`.

Run as a script (ctest does): exits 77 with "skipped: ..." when Chromium or
Node.js/npm is missing, so ctest reports the test as skipped, not passed.

Environment: DW_BIN_DIR, NATS_SERVER (as the integration tests),
DW_SCREENSHOT (where chat.test.mjs writes the screenshot),
DW_CHROMIUM (default /usr/bin/chromium), DW_WEB_DIR (the page to serve;
default: the source tree's services/edge/web).
"""
import json
import os
import shutil
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

CHROMIUM = os.environ.get("DW_CHROMIUM", "/usr/bin/chromium")
SKIP = 77


def missing_tools():
    """What this test needs and the machine lacks (empty when all is there)."""
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append("chromium not installed")
    for tool in ("node", "npm"):
        if not shutil.which(tool):
            missing.append(f"{tool} not installed")
    return missing


def ensure_node_modules():
    """npm ci into tests/browser/node_modules unless the locked version of
    playwright-core is already there (node_modules is not committed)."""
    with open(os.path.join(HERE, "package-lock.json")) as f:
        want = json.load(f)["packages"]["node_modules/playwright-core"]["version"]
    have_path = os.path.join(HERE, "node_modules", "playwright-core", "package.json")
    try:
        with open(have_path) as f:
            if json.load(f).get("version") == want:
                return
    except (OSError, ValueError):
        pass
    print(f"npm ci (playwright-core {want})", flush=True)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=HERE, check=True,
                   timeout=300)


class BrowserChat(unittest.TestCase):
    def test_chat_page_in_chromium(self):
        from harness import Stack

        ensure_node_modules()
        web = os.environ.get("DW_WEB_DIR") or os.path.join(ROOT, "services", "edge", "web")
        stack = Stack(env={"DW_WEB_DIR": web}).start()
        ok = False
        try:
            edge = stack.edges[0]
            url = f"http://127.0.0.1:{edge.port}/"
            r = subprocess.run(["node", os.path.join(HERE, "chat.test.mjs"), url], cwd=HERE,
                               timeout=240)
            ok = r.returncode == 0
            self.assertEqual(r.returncode, 0, "chat.test.mjs failed (its output is above)")
        finally:
            if not ok:
                print(stack.logs())
            stack.cleanup()


if __name__ == "__main__":
    gaps = missing_tools()
    if gaps:
        print("skipped: " + ", ".join(gaps)
              + " (DW_PACKAGES_FILE=scripts/test-packages.txt scripts/deps.sh installs chromium)", flush=True)
        sys.exit(SKIP)
    unittest.main(verbosity=2)
