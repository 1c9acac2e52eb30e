"""A training worker's measured matmul peak (the denominator of its jobs' MFU) reaches every user: in the API's
details and on the Workers page, with its precision; a worker without one (an analysis worker) shows a dash."""

from fastapi.testclient import TestClient

from backend.db import Worker, session_scope, utcnow

PEAK = {"flops_per_second": 2.6e11, "dtype": "fp32", "device": "cpu", "threads": 2, "size": 2048}


def test_the_peak_is_shown_to_non_admins(client: TestClient) -> None:
    with session_scope() as s:
        s.add(Worker(name="t@host", queue="studio", device="cpu", details={"peak_matmul": PEAK, "pid": 7}))
        s.add(Worker(name="a@host", queue="studio.analysis", device="cpu", details={"pid": 8}))
        for w in s.query(Worker):
            w.last_seen_at = utcnow()
    items = {w["queue"]: w for w in client.get("/api/workers").json()["items"]}
    assert items["studio"]["details"] == {"peak_matmul": PEAK}  # hardware is shared, the pid is not
    assert "peak_matmul" not in items["studio.analysis"]["details"]
    page = client.get("/workers").text
    assert "Peak matmul" in page and "260 GFLOP/s" in page and ">fp32<" in page
