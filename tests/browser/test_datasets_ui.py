"""Headless Chromium through the dataset pages: a chunked drag-and-drop upload that survives a dropped chunk,
column mapping of a CSV, token statistics, the dry run with trained tokens highlighted, and hygiene fixes that
make a new version. Screenshots land in test-output/screenshots/.
"""

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.browser.test_dashboard import FIXTURES, SHOTS, page, shot
from tests.e2e.test_loop import pretrain
from tests.support import StudioProcess

pytestmark = pytest.mark.browser
__all__ = ["page"]  # fixture shared with the dashboard test

BIG_RECORDS = 170_000  # ≈ 12 MB: two chunks of 8 MiB at most, so the progress bar has a middle
QA_CSV = "frage,antwort,quelle\n" + "".join(
    f'"What is {i} plus {i}?","It is {2 * i}.",book {i % 3}\n' for i in range(12)
)
# Rows 0 and 12 are the same question with the same answer: an exact duplicate for the hygiene check.
QA_CSV += '"What is 0 plus 0?","It is 0.",book 0\n'

# Builds the same bytes in the page (no 12 MB argument through the driver) as `_big_jsonl` does here.
MAKE_BIG_FILE = """(n) => {
  const lines = [];
  for (let i = 0; i < n; i++) lines.push(`{"instruction": "Add ${i} and ${i}", "input": "", "output": "${2 * i}"}\\n`);
  const dt = new DataTransfer();
  dt.items.add(new File([lines.join("")], "sums.jsonl", {type: "application/jsonl"}));
  return dt;
}"""

# Remember every value the progress bar takes, across the navigation that ends the upload.
WATCH_PROGRESS = """() => {
  sessionStorage.setItem("progress", "[]");
  const bar = document.getElementById("upload-progress");
  new MutationObserver(() => {
    const seen = JSON.parse(sessionStorage.getItem("progress"));
    seen.push(Number(bar.value));
    sessionStorage.setItem("progress", JSON.stringify(seen));
  }).observe(bar, {attributes: true, attributeFilter: ["value"]});
}"""


def _big_jsonl() -> bytes:
    return "".join(
        f'{{"instruction": "Add {i} and {i}", "input": "", "output": "{2 * i}"}}\n' for i in range(BIG_RECORDS)
    ).encode()


def _login(page: Any, studio: StudioProcess) -> None:
    page.goto("/login")
    page.fill("#login-email", studio.email)
    page.fill("#login-password", studio.password)
    page.click("#login-submit")
    page.wait_for_url(re.compile(r"/jobs$"))


def _dataset_id(page: Any) -> int:
    page.wait_for_url(re.compile(r"/datasets/\d+$"), timeout=120_000)
    return int(page.url.rsplit("/", 1)[1])


def test_upload_map_columns_dry_run_and_fix(page, studio: StudioProcess, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import Route, expect

    # A tiny base model for the token views trains in the background while the uploads run.
    api = studio.client()
    text = api.post("/api/datasets", files={"file": ("tiny.txt", (FIXTURES / "tiny.txt").read_bytes())}).json()
    job = pretrain(api, text["id"], max_steps=3)
    _login(page, studio)

    # 1. Drag and drop a 12 MB file: inspected, then sent in chunks. The second chunk's connection drops
    #    once; the page asks the server where to resume and finishes the upload.
    dropped: list[str] = []

    def drop_second_chunk(route: Route) -> None:
        req = route.request
        if req.method == "PUT" and not dropped and not (req.headers.get("content-range") or "").startswith("bytes 0-"):
            dropped.append(req.headers["content-range"])
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route(re.compile(r"/api/uploads/[0-9a-f]{32}$"), drop_second_chunk)
    page.goto("/datasets")
    page.evaluate(WATCH_PROGRESS)
    handle = page.evaluate_handle(MAKE_BIG_FILE, BIG_RECORDS)
    page.dispatch_event("#upload-drop", "drop", {"dataTransfer": handle})
    expect(page.locator("#inspect")).to_be_visible()
    expect(page.locator("#upload-submit")).to_be_enabled(timeout=60_000)
    expect(page.locator("#inspect-shape-detected")).to_contain_text("prompt")
    shot(page, "datasets-inspect-big")
    page.fill("#upload-name", "sums")
    page.click("#upload-submit")
    expect(page.locator("#upload-progress")).to_be_visible()
    big_id = _dataset_id(page)
    page.unroute(re.compile(r"/api/uploads/[0-9a-f]{32}$"))
    assert len(dropped) == 1, dropped
    seen = json.loads(page.evaluate("() => sessionStorage.getItem('progress')"))
    assert any(0 < v < 100 for v in seen), seen  # the bar moved through the middle, not 0 → done
    assert max(seen) >= 90, seen
    expect(page.locator("#dataset-records")).to_have_text(f"{BIG_RECORDS:,}")
    assert api.get(f"/api/datasets/{big_id}").json()["sha256"] == hashlib.sha256(_big_jsonl()).hexdigest()
    shot(page, "dataset-big")

    # 2. A CSV whose columns have names no detector knows: map them to prompt/completion.
    csv = tmp_path / "fragen.csv"
    csv.write_text(QA_CSV)
    page.goto("/datasets")
    page.set_input_files("#upload-file", str(csv))
    expect(page.locator("#inspect-columns")).to_contain_text("frage")
    page.select_option("#inspect-shape", "prompt_completion")
    expect(page.locator("#column-map-prompt")).to_be_visible()
    page.select_option("#column-map-prompt", "frage")
    page.select_option("#column-map-completion", "antwort")
    expect(page.locator("#upload-submit")).to_be_enabled()
    expect(page.locator("#inspect-rows")).to_contain_text("What is 3 plus 3?")
    shot(page, "datasets-column-map")
    page.click("#upload-submit")
    qa_id = _dataset_id(page)
    expect(page.locator("#dataset-shape")).to_have_attribute("data-shape", "prompt_completion")
    expect(page.locator("#dataset-records")).to_have_text("13")
    expect(page.locator("#dataset-rows thead")).to_contain_text("prompt")
    expect(page.locator("#dataset-rows tbody tr").first).to_contain_text("What is 0 plus 0?")
    stored = api.get(f"/api/datasets/{qa_id}").json()
    assert stored["shape"] == "prompt_completion"

    # 3. Token statistics and the dry run need the base model.
    job = studio.wait_job(api, job["id"], ("succeeded", "failed"))
    assert job["status"] == "succeeded", job
    model_id = next(m["id"] for m in api.get("/api/models").json()["items"] if m["job_id"] == job["id"])
    page.reload()
    page.select_option("#analysis-base-model", str(model_id))
    page.select_option("#analysis-objective", "sft")
    page.fill("#analysis-max-length", "64")
    page.fill("#analysis-batch-size", "4")

    # Each view asks once, then follows the analysis's stream: no repeated GETs while the worker computes.
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if re.search(r"/(stats|hygiene)\?", r.url) else None)
    page.click("#stats-run")
    expect(page.locator("#stats-results")).to_be_visible(timeout=120_000)
    expect(page.locator("#stats-records")).to_have_text("13")
    assert page.locator("#stats-tokens-total").inner_text() != "—"
    page.wait_for_function("() => Number(document.querySelector('#stats-histogram').dataset.bars) > 0")
    page.locator("#stats").screenshot(path=str(SHOTS / "dataset-stats.png"))

    page.fill("#render-index", "5")  # counted from 1 on the page: "What is 4 plus 4?"
    page.click("#render-run")
    expect(page.locator("#render-result")).to_be_visible(timeout=120_000)
    trained = page.locator("#render-tokens .tok-trained")
    expect(trained.first).to_be_visible()
    assert page.locator("#render-tokens .tok-masked").count() > 0  # the prompt is context, not loss
    assert "8" in "".join(trained.all_inner_texts())  # the answer to "What is 4 plus 4?" carries the loss
    assert int(page.locator("#render-supervised").inner_text().replace(",", "")) == trained.count()
    page.locator("#render").screenshot(path=str(SHOTS / "dataset-dry-run.png"))
    page.click("#render-next")
    expect(page.locator("#render-index")).to_have_value("6")
    expect(page.locator("#render-tokens")).to_have_attribute("aria-label", "Tokens of record 6", timeout=60_000)

    # 4. Hygiene finds the duplicate row; applying the fix makes version 2, whose parent is this one.
    page.click("#hygiene-run")
    expect(page.locator("#hygiene-results")).to_be_visible(timeout=120_000)
    expect(page.locator("#hygiene-exact [data-count]")).not_to_have_text("0")
    assert [url.split("?")[0].rsplit("/", 1)[1] for url in asked] == ["stats", "hygiene"], asked
    page.check("#hygiene-fix-exact")
    shot(page, "dataset-hygiene")
    page.click("#hygiene-apply")
    page.wait_for_url(re.compile(rf"/datasets/(?!{qa_id}$)\d+$"), timeout=60_000)
    expect(page.locator("#dataset-version")).to_contain_text("2")
    expect(page.locator("#dataset-parent")).to_have_attribute("href", f"/datasets/{qa_id}")
    expect(page.locator("#dataset-records")).to_have_text("12")
    expect(page.locator("#dataset-versions tbody tr")).to_have_count(2)
    shot(page, "dataset-version-2")
