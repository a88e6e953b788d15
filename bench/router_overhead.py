"""Router overhead: microseconds per routing decision, on CPU, one prompt at a time.

Prompts: the held-out split of routing/data/requests.jsonl, cycled. Each call is timed on its own with
perf_counter_ns (the timer's cost is inside every figure, and inside the baseline too). Cases:
  * baseline      - a no-op function call with the prompt (same loop, same timer);
  * rules         - routing.rules.apply_rules(text, RuleSettings()) (what Router.decide runs first);
  * classifier    - Classifier.probability([precomputed embedding]) >= threshold: the pure decision cost;
  * router        - Router.decide(text) with the classifier and a precomputed-embedding lookup (rules + classifier);
  * embed + classifier - LocalEmbedder.embed([text]) then the classifier: the real per-request cost when the
                    prompt's embedding is not cached (all-MiniLM-L6-v2 on CPU, batch size 1; fewer calls), with
                    the runtime's default threads (one per core) and again with 1 thread (as the servers run it).
Every case gets a warm-up first. Reported: p50/p99/mean in microseconds and p50 / baseline p50 (informative).

    .venv/bin/python -m bench.router_overhead [--quick] [--decisions N] [--embed-decisions N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench._report import ERR, OUT, machine_note, percentile, progress, table
from rag.embedding import LocalEmbedder
from routing.classifier import Classifier, load_examples
from routing.router import Router
from routing.rules import RuleSettings, apply_rules

WARMUP = 50


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[str], object]
    calls: int


def _noop(text: str) -> object:
    return None


def time_calls(run: Callable[[str], object], prompts: Sequence[str], calls: int) -> list[float]:
    """Microseconds per call, each call timed on its own, after a warm-up."""
    for i in range(min(WARMUP, calls)):
        run(prompts[i % len(prompts)])
    out = []
    for i in range(calls):
        text = prompts[i % len(prompts)]
        start = time.perf_counter_ns()
        run(text)
        out.append((time.perf_counter_ns() - start) / 1000)
    return out


def build_cases(prompts: Sequence[str], decisions: int, embed_decisions: int) -> list[Case]:
    embedder, one_thread = LocalEmbedder(), LocalEmbedder(threads=1)
    classifier = Classifier.load()
    with ERR.status(f"embedding {len(set(prompts))} held-out prompts once (batched) for the precomputed cases…"):
        distinct = sorted(set(prompts))
        vectors = dict(zip(distinct, embedder.embed(distinct), strict=True))
    rules = RuleSettings()
    router = Router(rules, classifier, lambda texts: [vectors[t] for t in texts])

    def classify(text: str) -> bool:
        return classifier.probability([vectors[text]], [text])[0] >= classifier.threshold

    def embed_and_classify(text: str) -> bool:
        return classifier.probability(embedder.embed([text]), [text])[0] >= classifier.threshold

    def embed_one_thread_and_classify(text: str) -> bool:
        return classifier.probability(one_thread.embed([text]))[0] >= classifier.threshold

    return [
        Case("baseline: no-op call", _noop, decisions),
        Case("rules only (apply_rules)", lambda t: apply_rules(t, rules), decisions),
        Case("classifier, precomputed embedding", classify, decisions),
        Case("Router.decide, precomputed embedding", router.decide, decisions),
        Case("embedding (MiniLM, CPU, batch 1) + classifier", embed_and_classify, embed_decisions),
        Case("same, 1 thread (as the servers embed)", embed_one_thread_and_classify, embed_decisions),
    ]


def run_case(case: Case, prompts: Sequence[str]) -> list[float]:
    return time_calls(case.run, prompts, case.calls)


def report(results: dict[str, list[float]], prompts: int) -> None:
    base = percentile(results["baseline: no-op call"], 50)
    rows = [
        [name, len(us), percentile(us, 50), percentile(us, 99), sum(us) / len(us), percentile(us, 50) / base]
        for name, us in results.items()
    ]
    title = f"Routing decision cost, one prompt at a time ({prompts} held-out prompts cycled), microseconds"
    OUT.print(table(title, ["case", "calls", "p50 µs", "p99 µs", "mean µs", "p50 / baseline p50"], rows))
    OUT.print("ratio is informative only (no target); the baseline is the timer plus a Python call.")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.router_overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="500 decisions, 100 with embedding")
    parser.add_argument("--decisions", type=int, default=None, help="timed calls per case (default 2000)")
    parser.add_argument("--embed-decisions", type=int, default=None, help="timed calls with embedding (default 300)")
    args = parser.parse_args()
    decisions = args.decisions or (500 if args.quick else 2000)
    embed_decisions = args.embed_decisions or (100 if args.quick else 300)
    OUT.print(f"[bold]bench.router_overhead[/bold] · {machine_note()}")
    prompts = [e.text for e in load_examples() if e.heldout]
    cases = build_cases(prompts, decisions, embed_decisions)
    results: dict[str, list[float]] = {}
    with progress() as bar:
        task = bar.add_task("cases", total=len(cases), detail="")
        for case in cases:
            bar.update(task, detail=case.name)
            results[case.name] = run_case(case, prompts)
            bar.advance(task)
    report(results, len(prompts))


if __name__ == "__main__":
    main()
