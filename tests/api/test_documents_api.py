"""The agent HTTP API as a program uses it: upload with an Idempotency-Key, poll, search, errors."""

from __future__ import annotations

import json
import sys
import time
import uuid
from typing import Any

import httpx

from rag.services import RagServices
from tests.conftest import ApiServer
from tests.rag.helpers import GUIDE


def _auth(rag: RagServices, tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {rag.registry.issue_token(tenant)}"}


def _wait_done(api: str, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job: dict[str, Any] = httpx.get(f"{api}/v1/jobs/{job_id}", headers=headers).json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def test_retried_upload_with_the_same_key_is_one_job(rag: RagServices, tenant: str, api_server: ApiServer) -> None:
    headers = {**_auth(rag, tenant), "Idempotency-Key": f"order-{uuid.uuid4()}"}
    files = {"files": ("guide.md", GUIDE.encode(), "text/markdown")}
    data = {"tags": "billing, api", "metadata": json.dumps({"year": 2025, "reviewed": True})}

    first = httpx.post(f"{api_server.url}/v1/documents", headers=headers, files=files, data=data, timeout=60)
    retry = httpx.post(f"{api_server.url}/v1/documents", headers=headers, files=files, data=data, timeout=60)

    assert first.status_code == retry.status_code == 202
    [job], [again] = first.json()["jobs"], retry.json()["jobs"]
    assert again["job_id"] == job["job_id"]  # the double charge that does not happen
    other = {"files": ("guide.md", b"# Another guide\n\nOther content.", "text/markdown")}
    reused = httpx.post(f"{api_server.url}/v1/documents", headers=headers, files=other, data=data, timeout=60)
    assert reused.status_code == 422 and "was used for other content" in reused.json()["message"], reused.text
    done = _wait_done(api_server.url, headers, job["job_id"])
    assert done["state"] == "done" and done["progress"] == 1.0
    listed = httpx.get(f"{api_server.url}/v1/documents", headers=headers).json()["documents"]
    assert [(d["doc_id"], sorted(d["tags"]), d["metadata"]) for d in listed] == [
        ("guide.md", ["api", "billing"], {"year": 2025, "reviewed": True})
    ]


def test_search_filters_through_the_api(rag: RagServices, tenant: str, api_server: ApiServer) -> None:
    headers = _auth(rag, tenant)
    for name, year, tags in (("old.md", 2019, "archive"), ("new.md", 2025, "current")):
        body = GUIDE.replace("Payments guide", f"Payments guide {year}")
        response = httpx.post(
            f"{api_server.url}/v1/documents", headers=headers, timeout=60,
            files={"files": (name, body.encode(), "text/markdown")},
            data={"tags": tags, "metadata": json.dumps({"year": year, "region": "eu"})},
        )  # fmt: skip
        _wait_done(api_server.url, headers, response.json()["jobs"][0]["job_id"])

    def docs(filters: dict[str, Any], mode: str = "hybrid") -> set[str]:
        body = {"query": "refunds", "k": 50, "mode": mode, "filters": filters}
        found = httpx.post(f"{api_server.url}/v1/search", headers=headers, json=body, timeout=60)
        assert found.status_code == 200, found.text
        return {hit["doc_id"] for hit in found.json()["hits"]}

    assert docs({"field": "meta.year", "op": "gte", "value": 2020}) == {"new.md"}
    assert docs({"field": "tags", "op": "any_of", "value": ["archive"]}, mode="vector") == {"old.md"}
    assert docs({"all": [{"field": "meta.region", "op": "eq", "value": "eu"},
                         {"field": "meta.year", "op": "lt", "value": 2020}]}) == {"old.md"}  # fmt: skip
    assert docs({"any": [{"field": "doc_id", "op": "eq", "value": "old.md"},
                         {"field": "tags", "op": "any_of", "value": ["current"]}]}) == {"old.md", "new.md"}  # fmt: skip
    assert docs({"field": "tags", "op": "none_of", "value": ["archive", "current"]}, mode="keyword") == set()


def test_bad_uploads_get_clear_4xx_answers(rag: RagServices, tenant: str, api_server: ApiServer) -> None:
    headers = _auth(rag, tenant)
    api = api_server.url

    def upload(name: str, content: bytes, **data: str) -> httpx.Response:
        return httpx.post(f"{api}/v1/documents", headers=headers, files={"files": (name, content)}, data=data)

    unsupported = upload("slides.pptx", b"PK\x03\x04...")
    assert unsupported.status_code == 400 and "unsupported" in unsupported.json()["message"]
    bad_meta = upload("a.md", b"# A", metadata="{not json")
    assert bad_meta.status_code == 400 and "metadata is not valid JSON" in bad_meta.json()["message"]
    bad_filter = httpx.post(f"{api}/v1/search", headers=headers, json={"query": "x", "k": 500})
    assert bad_filter.status_code == 422 and "k" in bad_filter.json()["message"]
    missing = httpx.get(f"{api}/v1/jobs/not-a-job", headers=headers)
    assert missing.status_code == 404 and "no ingest job" in missing.json()["message"]
    cap = rag.settings.rag.max_documents_per_request
    many = [("files", (f"n{i}.md", f"# Note {i}".encode())) for i in range(cap + 1)]
    too_many = httpx.post(f"{api}/v1/documents", headers=headers, files=many, timeout=60)
    assert too_many.status_code == 400, too_many.text
    assert f"{cap + 1} documents in one request, over the limit of {cap}" in too_many.json()["message"]
    assert "Traceback" not in unsupported.text + bad_meta.text + bad_filter.text + missing.text


def test_full_ingest_queue_answers_429_with_retry_after(
    rag: RagServices, tenant: str, stack_env: dict[str, str], tmp_path: Any
) -> None:
    from orchestrion.launcher import services
    from orchestrion.launcher.supervisor import launch
    from tests.conftest import CONSOLE, free_port

    # Its own key prefix and no worker: accepted jobs stay queued, so the limit is reached.
    port = free_port()
    env = {**stack_env, "ORCHESTRION_SERVER__PORT": str(port), "ORCHESTRION_RAG__INGEST_QUEUE_LIMIT": "1",
           "ORCHESTRION_REDIS__KEY_PREFIX": f"busy-{uuid.uuid4().hex[:8]}"}  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "orchestrion", "serve"]
    spec = services.ServiceSpec("api-busy", argv, env, services.http_ok(f"{url}/healthz"), start_timeout_s=120)
    process = launch(spec, tmp_path, CONSOLE)
    try:
        headers = _auth(rag, tenant)
        first = httpx.post(f"{url}/v1/documents", headers=headers, files={"files": ("a.md", b"# A\n\nfirst")})
        second = httpx.post(f"{url}/v1/documents", headers=headers, files={"files": ("b.md", b"# B\n\nsecond")})
        assert first.status_code == 202
        assert second.status_code == 429
        assert int(second.headers["Retry-After"]) >= 1
        assert "retry after" in second.json()["message"]
        job_id = first.json()["jobs"][0]["job_id"]
        assert httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers).json()["state"] == "queued"  # kept
    finally:
        process.stop()
