"""Headless Chromium on the Account page: create an API token (its secret shown once), use it from a script,
revoke it with the row's button, and the API refuses it from then on. Screenshot: account-tokens.png."""

import re

import httpx
import pytest

from tests.browser.test_dashboard import page, shot
from tests.browser.test_jobs_ui import login
from tests.support import StudioProcess

pytestmark = pytest.mark.browser
__all__ = ["page"]  # fixture shared with the dashboard test


def test_create_use_and_revoke_a_token(page, studio: StudioProcess) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    login(page, studio)
    page.goto("/account")
    expect(page.locator("#admin-users")).to_have_count(0)  # not an administrator
    rows = page.locator("#token-table tbody tr")
    expect(rows).to_have_count(1)  # the token the test harness made for this user
    page.fill("#token-name", "nightly sync")
    page.fill("#token-days", "5")
    page.click("#token-create")

    expect(page.locator("#token-result")).to_be_visible()
    secret = page.locator("#token-value").inner_text().strip()
    assert secret.startswith("sts_")
    row = rows.filter(has_text="nightly sync")
    expect(row).to_have_count(1)
    expect(row.locator("td").nth(3)).to_have_text("never")  # last used
    assert secret not in page.locator("#token-table").inner_text()
    shot(page, "account-tokens")

    url = f"{studio.url}/api/me"
    assert httpx.get(url, headers={"Authorization": f"Bearer {secret}"}).json()["email"] == studio.email

    page.reload()  # the secret is gone for good; the row now says when the token was used
    expect(page.locator("#token-result")).to_be_hidden()
    assert secret not in page.content()
    expect(row.locator("td").nth(3)).not_to_have_text("never")
    expect(row.locator("td").nth(2)).not_to_have_text("never")  # it expires in 5 days

    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name=re.compile("Revoke")).click()
    expect(row).to_have_count(0)
    expect(rows).to_have_count(1)
    assert httpx.get(url, headers={"Authorization": f"Bearer {secret}"}).status_code == 401


def _as_admin(studio: StudioProcess) -> StudioProcess:
    """The studio seen by a fresh administrator (written straight to its database, like `as_new_user`)."""
    import copy
    import uuid

    from sqlalchemy.orm import Session

    from backend.db import User
    from backend.db.base import make_engine
    from tests.support import USER_PASSWORD, password_hash

    view = copy.copy(studio)
    view.email, view.password = f"admin-{uuid.uuid4().hex[:10]}@example.com", USER_PASSWORD
    engine = make_engine(studio.database_url)
    try:
        with Session(engine) as s:
            s.add(User(email=view.email, password_hash=password_hash(view.password), is_admin=True))
            s.commit()
    finally:
        engine.dispose()
    return view


def test_admin_disables_a_user_and_revokes_their_token(page, studio: StudioProcess) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    with studio.client() as client:
        spare = client.post("/api/tokens", json={"name": "spare key"}).json()["token"]
    me = f"{studio.url}/api/me"

    def status(token: str) -> int:
        return httpx.get(me, headers={"Authorization": f"Bearer {token}"}).status_code

    login(page, _as_admin(studio))
    page.goto("/account")
    page.on("dialog", lambda dialog: dialog.accept())
    user_row = page.locator(f"#users-table tr[data-email='{studio.email}']")
    expect(user_row).to_contain_text("active")
    user_row.locator("[data-action=disable]").click()
    expect(user_row).to_contain_text("disabled")
    assert status(studio.token) == 401 and status(spare) == 401
    user_row.locator("[data-action=enable]").click()
    expect(user_row).to_contain_text("active")
    assert status(studio.token) == 200

    user_row.locator("[data-action=tokens]").click()
    tokens = page.get_by_role("table", name=f"API tokens of {studio.email}")
    spare_row = tokens.locator("tr", has_text="spare key")
    expect(spare_row).to_have_count(1)
    shot(page, "account-admin-users")
    spare_row.get_by_role("button", name=re.compile("Revoke")).click()
    expect(spare_row).to_have_count(0)
    expect(tokens.locator("tr", has_text="tests")).to_have_count(1)  # the list stays open, the other token stays
    assert status(spare) == 401 and status(studio.token) == 200
