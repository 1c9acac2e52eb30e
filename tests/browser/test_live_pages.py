"""Headless Chromium on the pages that follow the server over SSE, one `studio up` (embedded) for all of them:
the Models list updates when a model is added or renamed through the API, with no request for the list; the
dataset page's statistics show a progress bar while the worker tokenizes, then the charts, with one POST to
/stats; a failed analysis (a dry run) shows its error and Retry; the Workers page shows the workers live and
the queue depth following the jobs. Screenshots: models-live.png, dataset-analysis-progress.png and
workers-live.png."""

import contextlib
import io
import json
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.test_dashboard import FIXTURES, SHOTS, page, shot
from tests.browser.test_jobs_ui import login, submit, upload
from tests.support import StudioProcess

pytestmark = pytest.mark.browser
__all__ = ["page"]  # fixture shared with the dashboard test

RECORDS = 6000  # a few seconds of tokenizing for the analysis worker: long enough to watch the bar move


def _model_zip(directory: Path) -> bytes:
    """A base model as the analyses use it: a real tokenizer and a config, with a safetensors file of one small
    tensor (registering a model reads only its header)."""
    from workers.data import train_tokenizer

    train_tokenizer([(FIXTURES / "tiny.txt").read_text()], vocab_size=300).save_pretrained(directory)
    (directory / "config.json").write_text(json.dumps({"model_type": "llama"}))
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
    (directory / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for file in sorted(directory.iterdir()):
            zf.write(file, f"{directory.name}/{file.name}")
    return out.getvalue()


def _add_model(api: httpx.Client, directory: Path, name: str) -> dict[str, Any]:
    res = api.post("/api/models", files={"file": (f"{name}.zip", _model_zip(directory))}, data={"name": name})
    assert res.status_code == 201, res.text
    return dict(res.json())


def _requests_to(page: Any, pattern: str, method: str | None = None) -> list[str]:
    """Every URL the page requests (with `method`, if given) whose path matches `pattern` (a regular
    expression), from now on."""
    seen: list[str] = []

    def note(r: Any) -> None:
        if re.search(pattern, r.url.split("?")[0]) and method in (None, r.method):
            seen.append(r.url)

    page.on("request", note)
    return seen


def test_models_list_follows_the_api_without_asking(page, studio: StudioProcess, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    api = studio.client()
    asked = _requests_to(page, r"/api/models(/\d+)?$|/models$")
    login(page, studio)
    asked.clear()  # the login lands on /jobs; from here on, only the models page
    page.goto("/models")
    expect(page.locator("#model-table")).to_have_attribute("data-live", "open")
    expect(page.locator("#models-empty")).to_be_visible()
    asked.clear()  # the page itself

    model = _add_model(api, tmp_path / "tiny-tok", "live-tokenizer")
    row = page.locator(f'#model-table tr[data-model-id="{model["id"]}"]')
    expect(row.locator(".badge")).to_have_text("ready", timeout=15_000)
    expect(page.locator("#models-empty")).to_be_hidden()
    expect(row).to_contain_text("upload")
    expect(row).to_contain_text("llama")
    expect(row.get_by_role("link", name="Fine-tune")).to_be_visible()
    assert api.patch(f"/api/models/{model['id']}", json={"name": "renamed-live"}).status_code == 200
    expect(row.locator(".cell-title a")).to_have_text("renamed-live")
    shot(page, "models-live")
    assert asked == []  # every change came over the stream


def _alpaca_jsonl(count: int) -> bytes:
    rng = random.Random(0)
    words = (FIXTURES / "tiny.txt").read_text().split()
    rows = (
        {"instruction": " ".join(rng.choices(words, k=20)), "input": "", "output": " ".join(rng.choices(words, k=30))}
        for _ in range(count)
    )
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


COUNT = re.compile(r"Tokenizing ([\d,]+) /")
MOVED = "/Tokenizing [1-9]/"  # the bar past its start (a JavaScript regular expression)
# Every label the statistics' progress bar shows, as it changes.
WATCH_ANALYSIS = """() => {
  window.statsSeen = [];
  const box = document.getElementById("stats-progress");
  new MutationObserver(() => {
    if (!box.hidden) window.statsSeen.push(box.querySelector(".progress-label").textContent);
  }).observe(box, {attributes: true, childList: true, subtree: true, characterData: true});
}"""


def test_dataset_statistics_show_progress_then_charts(page, studio: StudioProcess, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    api = studio.client()
    model = _add_model(api, tmp_path / "stats-tok", "stats-tokenizer")
    res = api.post("/api/datasets", files={"file": ("many.jsonl", _alpaca_jsonl(RECORDS))})
    assert res.status_code == 201, res.text
    dataset = res.json()
    # A second model whose tokenizer files are gone from disk: its analysis fails, and says why.
    broken = _add_model(api, tmp_path / "broken-tok", "broken-tokenizer")
    broken_dir = studio.data_dir / "models" / str(broken["id"])
    hidden = tmp_path / "hidden-tokenizer"
    hidden.mkdir()
    for file in broken_dir.glob("tokenizer*"):
        file.rename(hidden / file.name)

    stats_asks = _requests_to(page, r"/api/datasets/\d+/stats$", "POST")
    login(page, studio)
    page.goto(f"/datasets/{dataset['id']}")
    page.evaluate(WATCH_ANALYSIS)
    page.select_option("#analysis-base-model", str(model["id"]))
    page.fill("#analysis-max-length", "64")
    page.click("#stats-run")
    progress = page.locator("#stats-progress")
    expect(progress).to_be_visible()
    expect(progress.locator(".progress-label")).to_contain_text(
        re.compile(rf"Tokenizing [\d,]+ / {RECORDS:,} records"), timeout=60_000
    )
    with contextlib.suppress(PlaywrightTimeout):  # a fast worker may be done first: then the shot shows that
        page.wait_for_function(
            f"() => {MOVED}.test(document.querySelector('#stats-progress').textContent)", timeout=10_000
        )
    page.locator("#stats").screenshot(path=str(SHOTS / "dataset-analysis-progress.png"))
    expect(page.locator("#stats-results")).to_be_visible(timeout=120_000)
    expect(progress).to_be_hidden()
    expect(page.locator("#stats-records")).to_have_text(f"{RECORDS:,}")
    page.wait_for_function("() => Number(document.querySelector('#stats-histogram').dataset.bars) > 0")
    counts = [
        int(m.group(1).replace(",", "")) for t in page.evaluate("() => window.statsSeen") if (m := COUNT.search(t))
    ]
    assert counts == sorted(counts) and counts[-1] <= RECORDS, counts
    assert len(stats_asks) == 1, stats_asks  # asked once, then followed the stream

    # A failure (the dry run of one record, quick to redo): the error and Retry; with the files back, Retry
    # computes it again (refresh=true).
    render_asks = _requests_to(page, r"/api/datasets/\d+/render$", "POST")
    page.select_option("#analysis-base-model", str(broken["id"]))
    page.click("#render-run")
    expect(page.locator("#render-error")).to_be_visible(timeout=60_000)
    expect(page.locator("#render-error")).to_contain_text("tokenizer")
    expect(page.locator("#render-retry")).to_be_visible()
    for file in hidden.iterdir():
        file.rename(broken_dir / file.name)
    page.click("#render-retry")
    expect(page.locator("#render-result")).to_be_visible(timeout=60_000)
    expect(page.locator("#render-error")).to_be_hidden()
    expect(page.locator("#render-retry")).to_be_hidden()
    assert ["refresh=true" in url for url in render_asks] == [False, True], render_asks


def test_workers_page_shows_live_workers_and_the_queue(page, studio: StudioProcess) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    api = studio.client()
    dataset_id = upload(api)
    asked = _requests_to(page, r"/api/workers$|/workers$")
    login(page, studio)
    page.goto("/workers")
    asked.clear()
    table = page.locator("#worker-table")
    expect(table).to_have_attribute("data-live", "open")
    training = table.locator("tbody tr", has_text="training")
    expect(training).to_have_attribute("data-live", "true")
    expect(table.locator("tbody tr", has_text="analysis")).to_have_attribute("data-live", "true")
    expect(training.locator(".seen-cell")).to_contain_text("ago")
    expect(training.locator('td[data-label="Free disk"]')).to_contain_text(" GiB")  # what placement reads
    expect(page.locator("#workers-empty")).to_be_hidden()
    expect(page.locator("#queue-depth")).to_have_attribute("data-queued", "0")

    # One job runs, the next waits: the worker shows its job and the queue its depth, then both clear.
    running = submit(api, dataset_id, "runs", max_steps=2000)
    waiting = submit(api, dataset_id, "waits", max_steps=5)
    expect(training.get_by_role("link", name=f"Job {running['id']}")).to_be_visible(timeout=60_000)
    expect(page.locator("#queue-depth")).to_have_attribute("data-queued", "1")
    expect(page.locator("#queue-depth")).to_have_text("1 job waiting in the queue")
    shot(page, "workers-live")
    for job in (waiting, running):
        assert api.post(f"/api/jobs/{job['id']}/cancel").status_code == 200
    expect(page.locator("#queue-depth")).to_have_attribute("data-queued", "0", timeout=60_000)
    expect(training).to_contain_text("idle", timeout=60_000)
    assert asked == []  # every update came over the stream
