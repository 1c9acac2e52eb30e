"""CSRF in Chromium: a page on another port of the same host (same-site, so the session cookie goes along with its
requests) auto-submits a form and sends a no-cors fetch to cancel the user's job: both are refused and the job
runs on. The same action from the studio's own job page works."""

import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.browser.test_dashboard import page
from tests.browser.test_jobs_ui import login, submit, upload
from tests.support import StudioProcess

pytestmark = pytest.mark.browser
__all__ = ["page"]  # fixture shared with the dashboard test

# Plants a studio_csrf cookie of its own (cookies ignore ports: it lands on the studio's host too) and sends the
# matching token, so only the Origin check stands between it and the job.
ATTACK = """<!DOCTYPE html>
<html><body>
<iframe name="sink"></iframe>
<form id="forged" method="post" action="{target}" target="sink">
  <input type="hidden" name="csrf_token" value="planted-token-planted-token-planted-token">
</form>
<script>
  document.cookie = "studio_csrf=planted-token-planted-token-planted-token; path=/";
  document.getElementById("forged").submit();
  fetch("{target}", {{ method: "POST", mode: "no-cors", credentials: "include" }})
    .then(() => {{ document.title = "fetched"; }}, () => {{ document.title = "fetch failed"; }});
</script>
</body></html>
"""


@pytest.fixture
def other_origin() -> Iterator[tuple[str, dict[str, str]]]:
    """A tiny site on another port of 127.0.0.1: (its URL, the pages it serves by path)."""
    pages: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path, "").encode()
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", pages
    server.shutdown()
    server.server_close()


def test_another_port_cannot_cancel_a_job_the_job_page_can(  # type: ignore[no-untyped-def]
    page, studio: StudioProcess, other_origin: tuple[str, dict[str, str]]
) -> None:
    from playwright.sync_api import expect

    client = studio.client()
    job = submit(client, upload(client), "csrf-target", max_steps=5000)
    target = f"{studio.url}/api/jobs/{job['id']}/cancel"
    login(page, studio)

    answers: list[tuple[str, int]] = []
    page.on("response", lambda r: answers.append((r.request.method, r.status)) if r.url == target else None)
    site, pages = other_origin
    pages["/attack.html"] = ATTACK.format(target=target)
    page.goto(f"{site}/attack.html")
    expect(page).to_have_title("fetched")
    deadline = time.monotonic() + 15
    while len(answers) < 2 and time.monotonic() < deadline:  # the form's answer lands in the iframe
        page.wait_for_timeout(100)
    # Both requests reached the studio with the session cookie (else 401) and were refused by the CSRF check.
    assert answers == [("POST", 403), ("POST", 403)], answers
    seen = client.get(f"/api/jobs/{job['id']}").json()
    assert seen["status"] != "cancelled" and not seen["cancel_requested"], seen

    # The studio's own page: the button's fetch carries the Origin and the token.
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"/jobs/{job['id']}")
    page.locator("#job-cancel").click()
    expect(page.locator("#job-status")).to_have_attribute("data-status", "cancelled", timeout=60_000)
    assert client.get(f"/api/jobs/{job['id']}").json()["status"] == "cancelled"
    # The one native form a logged-in page posts, with its csrf_token field: logging out works.
    page.locator("#logout").click()
    page.wait_for_url(re.compile(r"/login"))
    page.goto("/jobs")
    expect(page).to_have_url(re.compile(r"/login\?next="))


@pytest.mark.parametrize(("path", "rendered"), [("/docs", ".opblock"), ("/redoc", "[data-section-id]")])
def test_api_docs_render_under_the_policy(page, studio: StudioProcess, path: str, rendered: str) -> None:  # type: ignore[no-untyped-def]
    """Swagger UI and ReDoc, vendored and started from files, run with `script-src 'self'`: no CSP violation."""
    violations: list[str] = []

    def on_console(message: Any) -> None:
        # ReDoc's footer logo is the one thing it loads from elsewhere (cdn.redoc.ly): blocked, as it should be.
        if "Content Security Policy" in message.text and "cdn.redoc.ly/redoc/logo-mini.svg" not in message.text:
            violations.append(message.text)

    page.on("console", on_console)
    page.goto(path)
    page.locator(rendered).first.wait_for(timeout=30_000)
    assert page.locator(rendered).count() > 10
    assert violations == [], violations
