"""Graph logic with scripted chat models: plans, retrieval, tools, replans, fallbacks, budgets, fan-out,
approvals and threads. Real Valkey (run records), a real SQLite checkpointer and the real MCP toolbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.graphs.harness import CHECKPOINT_URL_VARIABLE, answer, harness, plan, retrieve, run, tool
from tests.graphs.scripted import Script, hit
from tools.servers_file import ToolRules

TENANT = "acme"


@pytest.fixture(autouse=True, params=["sqlite", "postgres"])
def checkpointer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every test here runs on both checkpointers: SQLite (the embedded default) and Postgres (compose)."""
    if request.param == "postgres":
        monkeypatch.setenv(CHECKPOINT_URL_VARIABLE, request.getfixturevalue("postgres_url"))
    yield request.param


def test_plan_retrieve_answer_cites_what_was_retrieved(valkey: str, tmp_path: Path) -> None:
    script = Script().on("plan", plan(retrieve("s1", "okapi habitat"), answer("s2", "s1")))
    script.on("answer", "Okapis live in rainforests [1], not deserts [7].")

    async def main() -> None:
        async with harness(valkey, tmp_path, script) as h:
            h.tools.hits = [
                hit("zoo/okapi", 0, 0.91, "The okapi lives in the Ituri rainforest.", "Okapi"),
                hit("zoo/camel", 2, 0.40, "Camels live in deserts.", "Camel"),
            ]
            done = await h.runner.ask(TENANT, "Where do okapis live?", on_event=h.record)
            assert done.status == "success", done.error
            assert done.plan_source == "model"
            assert done.answer == "Okapis live in rainforests [1], not deserts."  # [7] pointed at nothing
            assert [c["doc_id"] for c in done.citations] == ["zoo/okapi"]
            assert done.citations[0]["chunk_index"] == 0 and done.citations[0]["heading_path"] == ["Okapi", "Section"]
            # the search ran for the run's tenant, with the planned query
            assert h.tools.calls[0][:2] == ("search_documents", TENANT)
            assert h.tools.calls[0][2]["query"] == "okapi habitat"
            kinds = [k for k, _ in h.events]
            assert kinds.index("plan") < kinds.index("step") < kinds.index("answer")

    run(main)


def test_a_failing_tool_sends_the_run_back_to_the_planner(valkey: str, tmp_path: Path) -> None:
    script = Script().on(
        "plan",
        plan(tool("s1", "flaky", {"x": 1}), answer("s2", "s1")),
        plan(tool("t1", "add", {"a": 2, "b": 3}), answer("t2", "t1")),
    )

    async def main() -> None:
        async with harness(valkey, tmp_path, script) as h:
            h.tools.fail_next = 1
            done = await h.runner.ask(TENANT, "Compute something")
            assert done.status == "success", done.error
            state = await h.runner.thread_state(TENANT, done.thread_id)
            assert [p["version"] for p in state["plans"]] == [1, 2]
            assert state["step_results"]["p1.s1"]["ok"] is False
            assert "flaky failed on purpose" in state["step_results"]["p1.s1"]["error"]
            assert state["step_results"]["p2.t1"]["ok"] is True
            replan_prompt = script.calls[1][2][-1].text
            assert "flaky failed on purpose" in replan_prompt  # the planner was told what failed
            assert h.tools.count("add") == 1 and h.tools.count("flaky") == 1

    run(main)


def test_an_invalid_plan_is_retried_once_then_the_fixed_plan_is_used(valkey: str, tmp_path: Path) -> None:
    script = Script().on("plan", "not json at all", plan(tool("s1", "no_such_tool", {}), answer("s2")))

    async def main() -> None:
        async with harness(valkey, tmp_path, script) as h:
            h.tools.hits = [hit("d", 0, 0.5, "passage")]
            done = await h.runner.ask(TENANT, "What is in my documents?")
            assert done.status == "success" and done.plan_source == "fallback"
            state = await h.runner.thread_state(TENANT, done.thread_id)
            first = state["plans"][0]
            assert len(first["errors"]) == 2 and "not JSON" in first["errors"][0]
            assert "no tool 'no_such_tool'" in first["errors"][1]
            assert "no valid plan" in first["reason"]
            assert [s["kind"] for s in first["steps"]] == ["retrieve", "answer"]
            # the retry showed the model its own answer and the problems
            retry = script.calls[1][2]
            assert retry[-2].text == "not json at all" and "cannot run" in retry[-1].text
            assert done.citations and done.citations[0]["doc_id"] == "d"

    run(main)


def test_a_tier_that_cannot_plan_gets_the_fixed_plan_without_asking(valkey: str, tmp_path: Path) -> None:
    script = Script()

    async def main() -> None:
        async with harness(valkey, tmp_path, script, can_plan=False) as h:
            h.tools.hits = [hit("d", 0, 0.5, "passage")]
            done = await h.runner.ask(TENANT, "Anything?")
            assert done.plan_source == "fixed" and "plan" not in script.purposes()
            assert "rewrite" not in script.purposes()  # a model that cannot plan does not rewrite queries either
            assert done.answer and done.citations

    run(main)


def test_budgets_end_the_run_with_their_reason(valkey: str, tmp_path: Path) -> None:
    two_calls = plan(tool("s1", "add", {"a": 1, "b": 1}), tool("s2", "add", {"a": 2, "b": 2}, "s1"), answer("s3"))

    async def main() -> None:
        async with harness(valkey, tmp_path, Script().on("plan", two_calls), max_tool_calls=1) as h:
            done = await h.runner.ask(TENANT, "Add twice")
            assert done.status == "success" and done.answer is None
            assert done.stop_reason == "tool-call budget spent (1 of 1 tool calls)"
            assert h.tools.count("add") == 1
        async with harness(valkey, tmp_path / "t", Script().on("plan", two_calls), max_tokens=15) as h:
            done = await h.runner.ask(TENANT, "Add twice")  # the plan alone costs 15 tokens
            assert done.stop_reason == "token budget spent (15 of 15 tokens)" and h.tools.count("add") == 0
        # One step allowed across plans: the first plan's step fails, the replan's step finds the budget spent.
        replan = Script().on(
            "plan",
            plan(tool("s1", "flaky", {"x": 1}), answer("s2")),
            plan(tool("t1", "add", {"a": 1, "b": 1}), answer("t2")),
        )
        async with harness(valkey, tmp_path / "s", replan, max_steps=1) as h:
            h.tools.fail_next = 1
            done = await h.runner.ask(TENANT, "Add once")
            assert done.plan_source == "model" and done.stop_reason == "step budget spent (1 of 1 steps)"
            assert h.tools.count("flaky") == 1 and h.tools.count("add") == 0

    run(main)


def test_independent_steps_run_at_the_same_time(valkey: str, tmp_path: Path) -> None:
    parallel = plan(
        tool("a", "slow_add", {"a": 1, "b": 2, "seconds": 0.5}),
        tool("b", "slow_add", {"a": 3, "b": 4, "seconds": 0.5}),
        answer("c", "a", "b"),
    )

    async def main() -> None:
        async with harness(valkey, tmp_path, Script().on("plan", parallel)) as h:
            done = await h.runner.ask(TENANT, "Two sums")
            assert done.status == "success"
            starts = [c[2]["t"] for c in h.tools.calls if c[0] == "slow_add"]
            ends = [c[2]["t"] for c in h.tools.calls if c[0] == "slow_add_done"]
            assert len(starts) == 2 and max(starts) < min(ends)  # the second began before the first ended
            state = await h.runner.thread_state(TENANT, done.thread_id)
            texts = [e["text"] for e in state["evidence"] if e["kind"] == "tool"]
            assert any('"sum":3' in t.replace(" ", "") for t in texts) and any(
                '"sum":7' in t.replace(" ", "") for t in texts
            )

    run(main)


def test_approval_interrupts_and_resumes_with_exactly_the_approved_call(valkey: str, tmp_path: Path) -> None:
    email = plan(tool("s1", "send_email", {"to": "ops@example.com", "body": "hi"}), answer("s2", "s1"))
    rules = ToolRules(requires_approval=["send_email"])

    async def main() -> None:
        async with harness(valkey, tmp_path, Script().on("plan", email), rules=rules) as h:
            waiting = await h.runner.ask(TENANT, "Email ops")
            assert waiting.status == "interrupted" and h.tools.count("send_email") == 0
            [pending] = waiting.interrupts
            assert pending["value"]["tool"] == "send_email"
            assert pending["value"]["arguments"] == {"to": "ops@example.com", "body": "hi"}
            thread = await h.runner.store.thread(TENANT, waiting.thread_id)
            assert thread.status == "interrupted"
            done = await h.runner.approve(TENANT, waiting.run_id, approved=True)
            assert done.status == "success" and h.tools.count("send_email") == 1
            assert (await h.runner.store.thread(TENANT, waiting.thread_id)).status == "idle"

    run(main)


def test_a_rejection_goes_back_to_the_planner_and_the_tool_never_runs(valkey: str, tmp_path: Path) -> None:
    email = plan(tool("s1", "send_email", {"to": "ops@example.com", "body": "hi"}), answer("s2", "s1"))
    script = Script().on("plan", email, plan(retrieve("r1", "ops contacts"), answer("r2", "r1")))

    async def main() -> None:
        async with harness(valkey, tmp_path, script, rules=ToolRules(requires_approval=True)) as h:
            h.tools.hits = [hit("contacts", 0, 0.7, "Ops: ops@example.com")]
            waiting = await h.runner.ask(TENANT, "Email ops")
            done = await h.runner.approve(TENANT, waiting.run_id, approved=False, reason="not now")
            assert done.status == "success" and h.tools.count("send_email") == 0
            state = await h.runner.thread_state(TENANT, done.thread_id)
            assert state["step_results"]["p1.s1"]["error"] == "rejected by the user: not now"
            assert state["rejected_tools"] == ["send_email"]
            replan = script.calls[-2][2][-1].text  # the second plan call, before the answer
            assert "rejected by the user" in replan and "send_email" in replan
            assert [p["version"] for p in state["plans"]] == [1, 2]

    run(main)


def test_a_follow_up_on_a_thread_sees_its_history(valkey: str, tmp_path: Path) -> None:
    script = Script().on("plan", plan(retrieve("s1", "q"), answer("s2"))).on("answer", "First answer [1].")

    async def main() -> None:
        async with harness(valkey, tmp_path, script) as h:
            h.tools.hits = [hit("d", 0, 0.5, "passage")]
            first = await h.runner.ask(TENANT, "What is the okapi?")
            second = await h.runner.ask(TENANT, "And where does it live?", thread_id=first.thread_id)
            assert second.thread_id == first.thread_id and second.status == "success"
            answer_call = [m for _, p, m in script.calls if p == "answer"][-1]
            texts = [m.text for m in answer_call]
            assert "What is the okapi?" in texts and "First answer [1]." in texts
            state = await h.runner.thread_state(TENANT, first.thread_id)
            assert len(state["messages"]) == 4  # two questions, two answers
            runs = await h.runner.store.thread_runs(TENANT, first.thread_id)
            assert {r.run_id for r in runs} == {first.run_id, second.run_id}

    run(main)


def test_another_tenant_cannot_read_resume_approve_or_list_a_thread(valkey: str, tmp_path: Path) -> None:
    from core.errors import NotFoundError

    email = plan(tool("s1", "send_email", {"to": "a@example.com", "body": "x"}), answer("s2"))

    async def main() -> None:
        async with harness(valkey, tmp_path, Script().on("plan", email), rules=ToolRules(requires_approval=True)) as h:
            waiting = await h.runner.ask("tenant-a", "Email a")
            for attempt in (
                h.runner.get_run("tenant-b", waiting.run_id),
                h.runner.approve("tenant-b", waiting.run_id, approved=True),
                h.runner.thread_state("tenant-b", waiting.thread_id),
                h.runner.ask("tenant-b", "continue", thread_id=waiting.thread_id),
            ):
                try:
                    await attempt
                except NotFoundError as exc:
                    # not found, exactly as an unknown id: nothing tells tenant-b the id exists elsewhere
                    assert str(exc) in (f"no run {waiting.run_id!r}", f"no thread {waiting.thread_id!r}")
                else:
                    raise AssertionError("tenant-b reached tenant-a's run or thread")
            assert await h.runner.list_threads("tenant-b") == []
            assert [t.thread_id for t in await h.runner.list_threads("tenant-a")] == [waiting.thread_id]
            assert h.tools.count("send_email") == 0

    run(main)


def test_a_call_whose_process_stopped_mid_call_is_not_made_again(valkey: str, tmp_path: Path) -> None:
    import time

    from routing.redis_loop import LoopRedis
    from tools.long_calls import CallRecord, LongCalls

    prefix = "t-once"
    calls = LongCalls(LoopRedis(valkey), prefix, send=lambda _: None, ttl_s=600)
    script = Script().on(
        "plan",
        plan(tool("s1", "add", {"a": 1, "b": 2}), answer("s2", "s1")),
        plan(retrieve("r1", "x"), answer("r2", "r1")),
    )

    async def main() -> None:
        async with harness(valkey, tmp_path, script, long_calls=calls, prefix=prefix) as h:
            h.tools.hits = [hit("d", 0, 0.5, "passage")]
            run_ = await h.runner.start(TENANT, "Add one and two")
            # What a process that died inside the call leaves behind: the call recorded as running.
            stale = CallRecord(
                f"{run_.run_id}:p1.s1",
                run_.run_id,
                "add",
                {"a": 1, "b": 2},
                "once",
                "running",
                time.time(),
                time.time() + 60,
            )
            assert await calls._create(stale)
            done = await h.runner.execute(run_.run_id)
            state = await h.runner.thread_state(TENANT, done.thread_id)
            assert h.tools.count("add") == 0  # not called a second time
            assert "stopped mid-call" in state["step_results"]["p1.s1"]["error"]
            assert done.status == "success" and len(state["plans"]) == 2  # the planner was told, and replanned
            # a finished call is answered from its record when a resumed run asks again
            again = await calls.once(stale.call_id, run_.run_id, "add", {}, call=lambda: None, timeout_s=60)  # type: ignore[arg-type,return-value]
            assert not again.ok and "stopped mid-call" in again.error

    run(main)


def test_the_time_budget_does_not_count_the_wait_for_a_decision(valkey: str, tmp_path: Path) -> None:
    import asyncio

    email = plan(tool("s1", "send_email", {"to": "ops@example.com", "body": "hi"}), answer("s2", "s1"))

    async def main() -> None:
        async with harness(
            valkey, tmp_path, Script().on("plan", email), rules=ToolRules(requires_approval=True), max_wall_s=2.0
        ) as h:
            waiting = await h.runner.ask(TENANT, "Email ops")
            await asyncio.sleep(2.5)  # longer than the whole budget
            done = await h.runner.approve(TENANT, waiting.run_id, approved=True)
            assert done.status == "success" and done.stop_reason == "" and done.answer
            assert done.usage["paused_s"] >= 2.5 and h.tools.count("send_email") == 1

    run(main)


def test_two_approvals_in_one_superstep_are_decided_together(valkey: str, tmp_path: Path) -> None:
    two = plan(
        tool("a", "send_email", {"to": "a@example.com", "body": "x"}),
        tool("b", "send_email", {"to": "b@example.com", "body": "y"}),
        answer("c", "a", "b"),
    )

    async def main() -> None:
        async with harness(valkey, tmp_path, Script().on("plan", two), rules=ToolRules(requires_approval=True)) as h:
            waiting = await h.runner.ask(TENANT, "Email both")
            assert waiting.status == "interrupted" and len(waiting.interrupts) == 2
            done = await h.runner.approve(TENANT, waiting.run_id, approved=True)
            assert done.status == "success"
            assert sorted(c[2]["to"] for c in h.tools.calls if c[0] == "send_email") == [
                "a@example.com",
                "b@example.com",
            ]

    run(main)


def test_model_written_arguments_are_checked_against_the_tool_schema(valkey: str, tmp_path: Path) -> None:
    # The plan names the tool but not its arguments: the model is asked for them with the tool's schema.
    script = Script().on("plan", plan(tool("s1", "add", None), answer("s2", "s1")))
    script.on("arguments", {"a": "two", "b": 2}, {"a": 2, "b": 2})  # the first does not fit the schema

    async def main() -> None:
        async with harness(valkey, tmp_path, script) as h:
            done = await h.runner.ask(TENANT, "Add two and two")
            state = await h.runner.thread_state(TENANT, done.thread_id)
            assert "invalid arguments for add" in state["step_results"]["p1.s1"]["error"]
            assert len(state["plans"]) == 2  # replanned; the replan's step got valid arguments
            assert state["step_results"]["p2.s1"]["ok"]
            # the invalid arguments were refused before any call: the only call is the replan's
            assert [c[2] for c in h.tools.calls if c[0] == "add"] == [{"a": 2, "b": 2}]

    script.on("plan", plan(tool("s1", "add", None), answer("s2", "s1")))
    run(main)


def test_queries_are_rewritten_when_the_model_can_plan_and_filters_come_from_the_request(
    valkey: str, tmp_path: Path
) -> None:
    script = Script().on("plan", plan({"id": "s1", "kind": "retrieve", "goal": "okapi habitat"}, answer("s2")))
    script.on("rewrite", {"queries": ["okapi range", "Okapia johnstoni habitat"]})

    async def main() -> None:
        async with harness(valkey, tmp_path, script) as h:
            h.tools.hits = [hit("zoo/okapi", 0, 0.9, "Ituri rainforest")]
            await h.runner.ask(TENANT, "Where do okapis live? tag:fauna doc:zoo/okapi")
            searches = [c[2] for c in h.tools.calls if c[0] == "search_documents"]
            assert [s["query"] for s in searches] == ["okapi habitat", "okapi range", "Okapia johnstoni habitat"]
            expected = {
                "all": [
                    {"field": "tags", "op": "any_of", "value": ["fauna"]},
                    {"any": [{"field": "doc_id", "op": "eq", "value": "zoo/okapi"}]},
                ]
            }
            assert all(s["filters"] == expected for s in searches)

    run(main)


def test_no_evidence_sends_a_model_plan_back_for_other_words(valkey: str, tmp_path: Path) -> None:
    script = Script().on("plan", plan(retrieve("s1", "zzz"), answer("s2")), plan(retrieve("t1", "okapi"), answer("t2")))

    async def main() -> None:
        async with harness(valkey, tmp_path, script) as h:
            h.tools.hits = []
            done = await h.runner.ask(TENANT, "Where do okapis live?")
            state = await h.runner.thread_state(TENANT, done.thread_id)
            assert len(state["plans"]) >= 2 and "found no passages" in script.calls[1][2][-1].text
            assert done.answer and done.answer.startswith("I found nothing")

    run(main)


def test_a_run_whose_starter_died_before_executing_it_is_recovered(valkey: str, tmp_path: Path) -> None:
    import asyncio

    script = Script().on("plan", plan(retrieve("s1", "q"), answer("s2")))

    async def main() -> None:
        async with harness(valkey, tmp_path, script, run_lease_s=2) as h:
            h.tools.hits = [hit("d", 0, 0.5, "passage")]
            started = await h.runner.start(TENANT, "Anything?")  # and its starter "dies": nobody executes it
            assert await h.runner.recover_once() == []  # not yet: it may still be starting
            await asyncio.sleep(2.5)
            assert await h.runner.recover_once() == [(TENANT, started.run_id)]
            await h.runner._resume(started.run_id)
            done = await h.runner.get_run(TENANT, started.run_id)
            assert done.status == "success" and done.executions == 1

    run(main)


def test_one_run_is_executed_by_one_process_at_a_time(valkey: str, tmp_path: Path) -> None:
    import asyncio

    from core.errors import OrchestrionError

    script = Script(delays={"answer": 1.0}).on("plan", plan(retrieve("s1", "q"), answer("s2")))

    async def main() -> None:
        async with harness(valkey, tmp_path, script) as h:
            h.tools.hits = [hit("d", 0, 0.5, "passage")]
            started = await h.runner.start(TENANT, "Anything?")
            first = asyncio.create_task(h.runner.execute(started.run_id))
            await asyncio.sleep(0.5)
            try:
                await h.runner.execute(started.run_id)  # a second executor, e.g. a recovery elsewhere
            except OrchestrionError as exc:
                assert "being executed by another process" in str(exc)
            else:
                raise AssertionError("a second execution ran beside the first")
            done = await first
            assert done.status == "success" and done.executions == 1
            assert [p for p in script.purposes() if p == "answer"] == ["answer"]

    run(main)


def test_an_ask_whose_process_loses_the_lease_answers_from_the_process_that_resumes_it(
    valkey: str, tmp_path: Path
) -> None:
    import asyncio

    script = Script(delays={"answer": 3.0}).on("plan", plan(retrieve("s1", "q"), answer("s2")))

    async def main() -> None:
        async with harness(valkey, tmp_path, script, run_lease_s=2) as h:
            h.tools.hits = [hit("d", 0, 0.5, "passage")]
            store = h.runner.store
            asking = asyncio.create_task(h.runner.ask(TENANT, "Anything?"))
            while not h.runner._executing:
                await asyncio.sleep(0.02)
            [run_id] = list(h.runner._executing)
            # This process stalls past its lease: another one holds the run now.
            await store.redis.client().set(store._lease(run_id), "another-process", px=1500)
            while run_id in h.runner._executing:
                await asyncio.sleep(0.05)
            assert not asking.done()  # the ask waits instead of failing
            await asyncio.sleep(1.6)  # that other process dies too: the run is orphaned, and resumed here
            [(_, found)] = await h.runner.recover_once()
            await h.runner._resume(found)
            done = await asyncio.wait_for(asking, 30)
            assert done.run_id == run_id and done.status == "success" and done.answer
            assert done.executions == 2

    run(main)
