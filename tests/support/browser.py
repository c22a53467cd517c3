"""The system Chromium for browser tests (`playwright install` is not available here), ``Pages`` (fresh
browser contexts that record what must never happen) and a CSP violation recorder. The ``chromium``
and ``pages`` fixtures (tests/conftest.py) use them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from playwright.sync_api import Browser, Page, Playwright, Route

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

# The demo pages are served with this header added on the way: no inline script or style.
STRICT_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

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


def add_strict_csp(route: Route) -> None:
    response = route.fetch()
    route.fulfill(response=response, headers={**response.headers, "content-security-policy": STRICT_CSP})


@dataclass
class Pages:
    """Opens pages in fresh browser contexts (separate people) and records what must never happen."""

    browser: Browser
    problems: list[str] = field(default_factory=list)
    contexts: list = field(default_factory=list)

    def open(self, url: str) -> Page:
        context = self.browser.new_context(viewport={"width": 1100, "height": 900})
        self.contexts.append(context)
        context.route(re.compile(r"/web/"), add_strict_csp)
        page = context.new_page()
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda error: self.problems.append(f"uncaught error: {error}"))
        page.on(
            "console",
            lambda message: (
                "Content Security Policy" in message.text and self.problems.append(f"CSP violation: {message.text}")
            ),
        )
        page.goto(url)
        return page

    def _dialog(self, dialog) -> None:
        self.problems.append(f"a dialog opened: {dialog.type} {dialog.message!r}")
        dialog.dismiss()

    def close(self) -> None:
        for context in self.contexts:
            context.close()
