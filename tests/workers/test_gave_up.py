"""A job that fails on an internal error tells its client a generic reason with the trace id, over the HTTP API
and MCP, while the worker's log keeps the exception."""

from __future__ import annotations

import logging
import time
import uuid

import httpx
import pytest
import redis

from observability.propagation import attached_from
from rag.jobs import JobState, JobStatus
from rag.services import RagServices
from tests.conftest import ApiServer
from tests.mcp_client import call, http, text_of
from workers.tasks import record_gave_up


def test_a_job_that_gave_up_tells_its_client_nothing_of_the_internals(
    rag: RagServices, tenant: str, api_server: ApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    now = time.time()
    job = rag.jobs.update(JobStatus(f"gave-up-{uuid.uuid4().hex[:8]}", tenant, "plan.md", JobState.STORING, now, now))
    # What exhausted retries leave on a worker: a driver's message naming an internal host and port.
    internal = redis.ConnectionError("Error 111 connecting to valkey-7.internal:6390. Connection refused.")
    trace_id = "0af7651916cd43dd8448eb211c80319c"

    request_trace = attached_from({"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"})
    with caplog.at_level(logging.ERROR, "workers.tasks"), request_trace:
        record_gave_up(rag.jobs, job.job_id, internal)

    token = rag.registry.issue_token(tenant)
    over_http = httpx.get(f"{api_server.url}/v1/jobs/{job.job_id}", headers={"Authorization": f"Bearer {token}"})
    [over_mcp] = call(http(f"{api_server.url}/mcp", token), [("get_ingest_status", {"job_id": job.job_id})])
    assert over_http.status_code == 200 and not over_mcp.is_error, text_of(over_mcp)
    assert over_mcp.structured_content is not None
    for seen in (over_http.json(), over_mcp.structured_content):
        assert seen["state"] == "failed"
        assert f"trace id {trace_id}" in seen["error"]
        for detail in ("valkey-7", "internal:", "6390", "ConnectionError", "Connection refused", "Error 111"):
            assert detail not in seen["error"], (detail, seen["error"])
    [logged] = [r for r in caplog.records if r.getMessage() == f"ingest job {job.job_id} gave up"]
    assert logged.exc_info is not None and logged.exc_info[1] is internal  # the detail stays in the log
