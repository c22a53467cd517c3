"""The system Chromium for browser tests (`playwright install` is not available here); a CSP violation recorder."""

from __future__ import annotations

from playwright.sync_api import Browser, Playwright

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    # Pages fulfilled by Playwright (to add the CSP header) have no known address, so
    # Chromium would treat them as public and block their connections to 127.0.0.1.
    "--disable-features=LocalNetworkAccessChecks",
]

# An init script: every ``securitypolicyviolation`` event of the page lands in ``window.cspViolations``.
RECORD_CSP_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
    window.cspViolations.push(`${event.violatedDirective} ${event.blockedURI} ${event.sample || ""}`);
});
"""


def launch_chromium(playwright: Playwright) -> Browser:
    """Debian's /usr/bin/chromium, headless."""
    return playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
