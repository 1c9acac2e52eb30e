"""Every page at a laptop's and a phone's width, in a German browser in Tokyo.

A user of the warm embedded studio (`studio up`) holds real content (two datasets, a tiny pretrain run and a LoRA
fine-tune of it); each page is
loaded, photographed and checked for what a person needs: a visible heading, no sideways scrolling on a phone,
times in the browser's locale and zone (not the server's UTC fallback), a keyboard path from the skip link to the
page's main action with the focus visible, 404 pages in words with a way back, and API refusals in words. A second
studio, an API with no worker and nothing in it, shows the empty states.
Screenshots: test-output/screenshots/<page>-laptop.png and <page>-phone.png.
"""

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.browser.test_dashboard import CHROMIUM, CHROMIUM_ARGS, FIXTURES, SHOTS
from tests.support import StudioProcess

pytestmark = pytest.mark.browser

VIEWPORTS = {"laptop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}
LOCALE, ZONE = "de-DE", "Asia/Tokyo"
HP = {"max_length": 64, "batch_size": 8, "warmup_steps": 1, "logging_steps": 1, "learning_rate": 2e-3}
# Intl's de-DE "medium" styles, which common.js asks for, as strftime patterns.
GERMAN = {"datetime": "%d.%m.%Y, %H:%M", "date": "%d.%m.%Y", "time": "%H:%M:%S"}


@dataclass
class Site:
    studio: StudioProcess
    text_id: int
    alpaca_id: int
    pretrain_id: int
    finetune_id: int
    model_id: int


def upload(client: httpx.Client, name: str) -> int:
    res = client.post("/api/datasets", files={"file": (name, (FIXTURES / name).read_bytes())})
    assert res.status_code == 201, res.text
    return int(res.json()["id"])


def run_job(studio: StudioProcess, client: httpx.Client, body: dict[str, Any]) -> int:
    res = client.post("/api/jobs", json=body)
    assert res.status_code == 201, res.text
    job = studio.wait_job(client, res.json()["id"], ("succeeded", "failed", "cancelled"), timeout=240)
    assert job["status"] == "succeeded", job
    return int(job["id"])


@pytest.fixture(scope="module")
def empty_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StudioProcess]:
    """`studio api` alone on a fresh database: no worker, no dataset, no job, no model. Started, not awaited:
    it boots while the other studio trains (tests call wait_healthy)."""
    tmp = tmp_path_factory.mktemp("empty-site")
    studio = StudioProcess({"STUDIO_DATA_DIR": str(tmp / "data")}, log_dir=tmp / "logs")
    studio.log_dir.mkdir(parents=True)
    try:
        studio.start("api", "api")  # migrates and creates the admin from STUDIO_ADMIN_PASSWORD
        yield studio
    finally:
        studio.__exit__(None, None, None)


@pytest.fixture(scope="module")
def site(embedded_studio: StudioProcess, empty_site: StudioProcess) -> Site:
    """The module's content, made by a user of its own on the warm embedded studio."""
    studio = embedded_studio.as_new_user()
    with studio.client() as client:
        text_id, alpaca_id = upload(client, "tiny.txt"), upload(client, "alpaca_small.json")
        pretrain = {"kind": "pretrain", "architecture": "tiny", "dataset_id": text_id, "name": "scratch"}
        pretrain_id = run_job(studio, client, {**pretrain, "hyperparameters": {**HP, "max_steps": 8}})
        model_id = next(m["id"] for m in client.get("/api/models").json()["items"] if m["job_id"] == pretrain_id)
        finetune = {"kind": "finetune", "base_model": model_id, "dataset_id": alpaca_id, "name": "tuned"}
        # 128: the tiny tokenizer spells some alpaca prompts in over 64 tokens (the pre-flight check would refuse).
        lora = {"method": "lora", "objective": "sft", "hyperparameters": {**HP, "max_steps": 6, "max_length": 128}}
        finetune_id = run_job(studio, client, {**finetune, **lora})
    return Site(studio, text_id, alpaca_id, pretrain_id, finetune_id, model_id)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail(f"Chromium is required in CI ({CHROMIUM}); .ci/run installs it")
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


_sessions: dict[str, Any] = {}


def open_page(browser: Any, studio: StudioProcess, viewport: str, *, logged_in: bool = True) -> Any:
    """A fresh tab in a German browser in Tokyo; logged in as the studio's user (through the form, once per user)
    unless told not."""
    options = {"base_url": studio.url, "locale": LOCALE, "timezone_id": ZONE, "accept_downloads": True}
    if logged_in and studio.email not in _sessions:
        context = browser.new_context(**options)
        page = context.new_page()
        page.goto("/login")
        page.fill("#login-email", studio.email)
        page.fill("#login-password", studio.password)
        page.click("#login-submit")
        page.wait_for_url(re.compile(r"/jobs$"))
        _sessions[studio.email] = context.storage_state()
        context.close()
    context = browser.new_context(
        **options, viewport=VIEWPORTS[viewport], storage_state=_sessions[studio.email] if logged_in else None
    )
    context.set_default_timeout(30_000)
    return context.new_page()


@pytest.fixture(params=list(VIEWPORTS))
def viewport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


OVERFLOW = """() => {
  const width = window.innerWidth;
  const wide = [...document.querySelectorAll('body *')].filter((el) => {
    const r = el.getBoundingClientRect();
    return r.width > 0 && r.right > width + 1;
  });
  const outermost = wide.filter((el) => !wide.includes(el.parentElement)).slice(0, 8);
  const name = (el) => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
    (typeof el.className === 'string' && el.className ? '.' + el.className.trim().split(/\\s+/).join('.') : '');
  return {scroll: document.documentElement.scrollWidth, width,
          culprits: outermost.map((el) => `${name(el)} right=${Math.round(el.getBoundingClientRect().right)}`)};
}"""

TIMES = """() => [...document.querySelectorAll('time[datetime]')].filter((el) => el.getClientRects().length)
  .map((el) => ({iso: el.dateTime, style: el.dataset.style || 'datetime', text: el.textContent.trim()}))"""


def check_page(page: Any, name: str, viewport: str, *, times: bool = False) -> None:
    """Heading visible, no sideways scroll at phone width, times in German and Tokyo time; then a full-page shot."""
    from playwright.sync_api import expect

    expect(page.locator("main h1").first).to_be_visible()
    if viewport == "phone":
        # The page itself never scrolls sideways; wide tables, charts and code scroll inside their own box.
        state = page.evaluate(OVERFLOW)
        assert state["scroll"] <= state["width"] + 1, f"{name} scrolls sideways on a phone: {state}"
    shown = page.evaluate(TIMES)
    assert shown or not times, f"{name} shows no <time>"
    for t in shown:
        # Rewritten in the browser from the ISO instant: no "UTC" left from the server's fallback text; the
        # absolute styles of common.js in German with Tokyo's clock (a relative "… ago" style has no clock).
        assert t["text"] and "UTC" not in t["text"], (name, t)
        if t["style"] in GERMAN:
            when = datetime.fromisoformat(t["iso"]).astimezone(ZoneInfo(ZONE))
            assert t["text"] == when.strftime(GERMAN[t["style"]]), (name, t)
    page.screenshot(path=str(SHOTS / f"{name}-{viewport}.png"), full_page=True)


def at_least(selector: str, attr: str, n: int) -> Callable[[Any], None]:
    return lambda page: page.wait_for_function(
        f"() => Number(document.querySelector('{selector}')?.dataset.{attr} || 0) >= {n}"
    )


def visible(selector: str) -> Callable[[Any], None]:
    def wait(page: Any) -> None:
        from playwright.sync_api import expect

        expect(page.locator(selector).first).to_be_visible()

    return wait


def says(selector: str, words: str) -> Callable[[Any], None]:
    def wait(page: Any) -> None:
        from playwright.sync_api import expect

        expect(page.locator(selector)).to_contain_text(words)

    return wait


# name → (path, what shows once the page has loaded its data, whether it lists times)
def tour(site: Site) -> dict[str, tuple[str, Callable[[Any], None], bool]]:
    return {
        "jobs": ("/jobs", visible(f'#job-table tr[data-job-id="{site.pretrain_id}"]'), True),
        "job": (f"/jobs/{site.finetune_id}", at_least("#loss-chart", "points", 6), True),
        "new-job": (f"/jobs/new?dataset_id={site.alpaca_id}", visible("#wizard-steps"), False),
        # The wizard's last step (a clone opens there): the summary and the estimate before launch.
        "new-job-review": (f"/jobs/new?clone={site.finetune_id}", says("#est-steps", "6"), False),
        "compare": (
            f"/compare?ids={site.pretrain_id}&ids={site.finetune_id}",
            at_least("#compare-chart", "runs", 2),
            False,
        ),
        "playground": (f"/playground?job_id={site.finetune_id}", visible("#pg-form"), False),
        # The methods comparison: its form, and its table for a finished run (no longer live).
        "methods": (f"/methods?ids={site.finetune_id}", visible('#methods-table[data-live="closed"]'), False),
        "datasets": ("/datasets", visible("#dataset-table"), True),
        "dataset": (f"/datasets/{site.text_id}", visible("#dataset-records"), True),
        "models": ("/models", visible("#model-table"), True),
        "model": (f"/models/{site.model_id}", visible("#model-status"), True),
        "workers": ("/workers", visible('#worker-table tr[data-live="true"]'), True),
        "account": ("/account", visible("#account-email"), True),
        "not-found": ("/datasets/999999", visible("#error-back"), False),
        # An API refusal inside a page: the compare page asks for a run that does not exist.
        "error": (f"/compare?ids={site.pretrain_id}&ids=999999", says("#compare-error", "job 999999 not found"), False),
    }


TOUR = [
    "jobs",
    "job",
    "new-job",
    "new-job-review",
    "compare",
    "playground",
    "methods",
    "datasets",
    "dataset",
    "models",
    "model",
    "workers",
]
TOUR += ["account", "not-found", "error"]


@pytest.mark.parametrize("name", TOUR)
def test_page_at_laptop_and_phone_width(site: Site, browser: Any, viewport: str, name: str) -> None:
    path, ready, times = tour(site)[name]
    page = open_page(browser, site.studio, viewport)
    page.goto(path)
    ready(page)
    check_page(page, name, viewport, times=times)
    page.context.close()


def test_login_page(site: Site, browser: Any, viewport: str) -> None:
    from playwright.sync_api import expect

    page = open_page(browser, site.studio, viewport, logged_in=False)
    page.goto("/jobs")
    expect(page).to_have_url(re.compile(r"/login\?next=/jobs$"))
    check_page(page, "login", viewport)
    page.context.close()


FOCUS = """() => {
  const el = document.activeElement;
  const style = getComputedStyle(el);
  const ring = (style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0) || style.boxShadow !== 'none';
  const r = el.getBoundingClientRect();
  return {id: el.id, cls: el.className, text: el.textContent.trim().slice(0, 40), inMain: !!el.closest('main'),
          ring, onScreen: r.right > 0 && r.left < innerWidth && r.width > 0};
}"""


def tab_to(page: Any, selector: str, limit: int = 15) -> list[str]:
    """Tab until `selector` has the focus; every stop on the way is in <main> and shows a focus ring."""
    passed = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        focus = page.evaluate(FOCUS)
        assert focus["inMain"] and focus["ring"] and focus["onScreen"], focus
        passed.append(focus["text"])
        if page.evaluate(f"() => document.activeElement.matches('{selector}')"):
            return passed
    raise AssertionError(f"{selector} not reached by Tab; the focus went through {passed}")


@pytest.mark.parametrize(
    ("name", "main_action"), [("jobs", "main .page-head a.btn-primary"), ("job", "#job-playground")]
)
def test_keyboard_skip_link_then_main_action(site: Site, browser: Any, name: str, main_action: str) -> None:
    path, ready, _ = tour(site)[name]
    page = open_page(browser, site.studio, "laptop")
    page.goto(path)
    ready(page)
    # The first Tab from the top lands on the skip link, which shows itself with a visible focus ring.
    page.keyboard.press("Tab")
    focus = page.evaluate(FOCUS)
    assert "skip-link" in focus["cls"] and focus["ring"] and focus["onScreen"], focus
    page.keyboard.press("Enter")  # past the site's navigation: the next Tab is inside the page
    passed = tab_to(page, main_action)
    assert len(passed) <= 6, passed
    page.screenshot(path=str(SHOTS / f"{name}-keyboard-focus.png"))
    page.context.close()


def test_unknown_ids_are_friendly_404_pages(site: Site, browser: Any) -> None:
    from playwright.sync_api import expect

    page = open_page(browser, site.studio, "phone")
    for path, status, back, label in (
        ("/jobs/999999", 404, "/jobs", "job 999999 not found"),
        ("/datasets/999999", 404, "/datasets", "dataset 999999 not found"),
        ("/models/999999", 404, "/models", "model 999999 not found"),
        ("/jobs/not-a-number", 422, "/jobs", "'not-a-number' is not a job number"),
        ("/compare?ids=7x", 422, "/jobs", "'7x' is not a job number"),
        ("/playground?model_id=-3", 422, "/jobs", "'-3' is not a model number"),
        ("/no/such-page", 404, "/jobs", "There is no page at /no/such-page"),
    ):
        # An HTML page in words with a way back to the list, never the API's JSON.
        response = page.goto(path)
        assert response.status == status and response.headers["content-type"].startswith("text/html"), path
        heading = "Not found" if status == 404 else "That address or request is not valid"
        expect(page.locator("main h1")).to_have_text(heading)
        expect(page.locator("#error-message")).to_contain_text(label)
        expect(page.locator("#error-hint")).to_contain_text("pick it from the list")
        expect(page.locator("#error-back")).to_have_attribute("href", back)
    page.click("#error-back")
    expect(page).to_have_url(re.compile(r"/jobs$"))
    page.context.close()


def test_wizard_shows_the_api_refusal_in_words(site: Site, browser: Any) -> None:
    """The dataset goes away (someone else deleted it) while the form is open: Start names what is wrong."""
    from playwright.sync_api import expect

    client = site.studio.client()
    doomed = upload(client, "tiny.txt")
    page = open_page(browser, site.studio, "phone")
    page.goto(f"/jobs/new?kind=pretrain&dataset_id={doomed}")
    page.check("#job-kind-pretrain")
    for _ in range(4):  # kind → data → model → settings → review
        page.click("#wizard-next")
    expect(page.locator("#job-submit")).to_be_visible()
    assert client.delete(f"/api/datasets/{doomed}").status_code == 204
    page.click("#job-submit")
    alert = page.locator("#job-form-error")
    expect(alert).to_be_visible()
    expect(alert).to_contain_text(f"dataset {doomed} not found")
    check_page(page, "new-job-refused", "phone")
    page.context.close()


EMPTY = {
    "jobs": ("/jobs", "#jobs-empty", "No jobs yet"),
    "datasets": ("/datasets", "#datasets-empty", "Upload a file"),
    "models": ("/models", "#models-empty", "pretrain one"),
    "workers": ("/workers", "main .empty-state", "studio worker"),  # worker/list.html: no id on it
    "compare": ("/compare", "#compare-no-runs", "Start a training run"),
    "playground": ("/playground", "#pg-empty", "Pretrain a model"),
}


@pytest.mark.parametrize("name", list(EMPTY))
def test_empty_states_say_what_to_do_next(empty_site: StudioProcess, browser: Any, name: str) -> None:
    from playwright.sync_api import expect

    empty_site.wait_healthy()
    path, selector, words = EMPTY[name]
    viewport = "phone"  # the narrow case; the laptop layout of these boxes is the same centred text
    page = open_page(browser, empty_site, viewport)
    page.goto(path)
    box = page.locator(selector)
    expect(box).to_be_visible()
    expect(box).to_contain_text(words)
    # Each one offers the next step as a link or a button, not only as words.
    assert box.locator("a, button, code").count() >= 1, name
    check_page(page, f"{name}-empty", viewport)
    page.context.close()


def test_compare_with_no_runs_picked(site: Site, browser: Any) -> None:
    from playwright.sync_api import expect

    page = open_page(browser, site.studio, "phone")
    page.goto("/compare")
    expect(page.locator("#compare-empty")).to_contain_text("Tick two or more runs")
    expect(page.locator("#compare-chart")).to_have_count(0)
    page.locator("#compare-pick input[name=ids]").nth(0).check()
    page.locator("#compare-pick input[name=ids]").nth(1).check()
    page.click("#compare-pick-submit")
    expect(page.locator("#compare-chart")).to_have_attribute("data-runs", "2")
    expect(page.locator("#compare-empty")).to_have_count(0)
    page.context.close()
