"""Routing cost and quality on data the router never saw: the held-out split, whole categories held out, and an
independent set that is never trained or tuned on.

Three evaluations, each reported as complex recall (complex requests sent to large / all complex), simple kept small
(simple requests sent to small / all simple) and the cost cut vs all-to-large on a 70/30 simple/complex mix:
  1. held-out split: the 25% of the training files (routing/data/requests.jsonl, requests-extra.jsonl) that
     Example.heldout keeps out, scored by the shipped artefact (routing/data/classifier.json), which was fitted on
     the other 75%; also the part of it from requests.jsonl alone (the figure the first router reported);
  2. leave one category out: every category of the training files in turn is removed, the training procedure
     (fit, then the threshold chosen by category-grouped cross-validation on what remains) runs on the rest, and
     the removed category is scored with that model and threshold, the second stage included; all categories'
     scores are pooled. A kind of request the router has never seen;
  3. independent set: routing/data/independent.jsonl (written apart from the training files, other topics and
     phrasing, many short-hard and long-easy requests; rules in routing/data/README.md), scored by the shipped
     Router(RuleSettings(), Classifier.load(), embed) exactly as the product builds it. The targets are judged here.
The mix: `--requests` (default 1,000) sampled with a fixed seed WITH replacement from the set, 70% from its simple
examples and 30% from its complex ones. Compared on it in the same run: everything to large (the baseline) and an
oracle that knows the labels (the best any router can do under this cost model).

Cost model (stated, not measured): prices routing/fleet.py ASSUMED_SMALL_PRICES / ASSUMED_LARGE_PRICES, USD per
million tokens (in, out); input tokens = the request's own MiniLM (all-MiniLM-L6-v2 WordPiece) token count, output
OUTPUT_TOKENS (300) for every request, whatever its class and tier: the cut measures the routing decisions alone.

Decision time: Router.decide on a precomputed embedding (what a request costs once its embedding is cached, as the
product caches it per query), beside the embedding call alone (LocalEmbedder.embed, one text) in the same run.
Targets: on the independent set, complex recall >= 95% and cost cut >= 60%; Router.decide p99 < 1 ms.

    .venv/bin/python -m bench.routing [--requests N] [--seed S] [--timed N]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from bench._report import ERR, OUT, machine_note, percentile, table, verdict
from rag.chunking import bundled_token_counter
from rag.embedding import LocalEmbedder
from routing.classifier import (
    DATASET,
    INDEPENDENT,
    SECOND_STAGE_BAND,
    Classifier,
    Example,
    design_matrix,
    leave_one_category_out,
    load_examples,
    training_examples,
)
from routing.cues import hard_cues
from routing.fleet import ASSUMED_LARGE_PRICES, ASSUMED_SMALL_PRICES
from routing.router import Router
from routing.rules import RuleSettings

SIMPLE_SHARE = 0.70
OUTPUT_TOKENS = 300
PRICES = {"small": ASSUMED_SMALL_PRICES, "large": ASSUMED_LARGE_PRICES}
TARGET_CUT = 0.60
TARGET_RECALL = 0.95
TARGET_DECIDE_US = 1000.0

Embed = Callable[[list[str]], list[list[float]]]


@dataclass(frozen=True)
class Scored:
    name: str
    examples: list[Example]
    large: list[bool]  # the router's decision per example


@dataclass(frozen=True)
class Row:
    name: str
    examples: int
    complex_recall: float
    simple_to_small: float
    cut: float
    oracle_cut: float


def lookup_embed(texts: Sequence[str], embedder: LocalEmbedder) -> Embed:
    """Embed each distinct text once (batched); the returned function looks vectors up."""
    distinct = sorted(set(texts))
    vectors = dict(zip(distinct, embedder.embed(distinct), strict=True))
    return lambda batch: [vectors[t] for t in batch]


def mix_cut(scored: Scored, tokens: dict[str, int], n: int, seed: int) -> tuple[float, float]:
    """Cost cut vs all-large of the router and of the oracle on an n-request 70/30 mix drawn from the set."""
    decided = list(zip(scored.examples, scored.large, strict=True))
    simple = [d for d in decided if not d[0].complex]
    hard = [d for d in decided if d[0].complex]
    rng = random.Random(seed)
    n_simple = round(n * SIMPLE_SHARE)
    mix = rng.choices(simple, k=n_simple) + rng.choices(hard, k=n - n_simple)

    def cost(tier: str, e: Example) -> float:
        price_in, price_out = PRICES[tier]
        return tokens[e.text] * price_in + OUTPUT_TOKENS * price_out

    base = sum(cost("large", e) for e, _ in mix)
    routed = sum(cost("large" if large else "small", e) for e, large in mix)
    oracle = sum(cost("large" if e.complex else "small", e) for e, _ in mix)
    return 1 - routed / base, 1 - oracle / base


def row(scored: Scored, tokens: dict[str, int], n: int, seed: int) -> Row:
    pairs = list(zip(scored.examples, scored.large, strict=True))
    n_complex = sum(e.complex for e in scored.examples) or 1
    n_simple = sum(not e.complex for e in scored.examples) or 1
    cut, oracle = mix_cut(scored, tokens, n, seed)
    return Row(scored.name, len(pairs), sum(e.complex and large for e, large in pairs) / n_complex,
               sum(not e.complex and not large for e, large in pairs) / n_simple, cut, oracle)  # fmt: skip


def heldout_scored(router: Router, training: Sequence[Example]) -> list[Scored]:
    heldout = [e for e in training if e.heldout]
    first = {e.id for e in load_examples(DATASET)}
    large = {e.id: router.decide(e.text).tier == "large" for e in heldout}
    original = [e for e in heldout if e.id in first]
    return [
        Scored("held-out split, both training files", heldout, [large[e.id] for e in heldout]),
        Scored("held-out split, requests.jsonl only", original, [large[e.id] for e in original]),
    ]


def loco_scored(training: Sequence[Example], embed: Embed, target_recall: float) -> Scored:
    """Leave one category out with the shipped procedure, the second stage applied with each fold's threshold."""
    texts = [e.text for e in training]
    x = design_matrix(embed(texts), texts)
    y = np.asarray([1.0 if e.complex else 0.0 for e in training])
    with ERR.status(f"leave-one-category-out: {len({e.category for e in training})} folds, each cross-validated…"):
        scores, thresholds = leave_one_category_out(x, y, training, target_recall)
    large = [bool(p >= t or (p >= t - SECOND_STAGE_BAND and hard_cues(e.text)))
             for p, t, e in zip(scores, thresholds, training, strict=True)]  # fmt: skip
    return Scored("leave one category out (training files)", list(training), large)


def frontier(
    classifier: Classifier, independent: Sequence[Example], embed: Embed, tokens: dict[str, int], n: int, seed: int
) -> str:
    """Diagnostic, chosen by nothing: the best cut any threshold would give on the independent set at recall >= the
    target. It says whether the target is out of reach of this model's scores, not a threshold to ship."""
    texts = [e.text for e in independent]
    scores = classifier.probability(embed(texts), texts)
    cued = [bool(hard_cues(t)) for t in texts]
    best: tuple[float, float, float] | None = None
    for t in sorted(set(scores)):
        large = [p >= t or (p >= t - classifier.band and c) for p, c in zip(scores, cued, strict=True)]
        r = row(Scored("", list(independent), large), tokens, n, seed)
        if r.complex_recall >= TARGET_RECALL and (best is None or r.cut > best[1]):
            best = (t, r.cut, r.simple_to_small)
    if best is None:
        return "no threshold reaches the recall target on the independent set"
    return (
        f"diagnostic (chooses nothing): the best any threshold does on the independent set at recall >= "
        f"{TARGET_RECALL:.0%} is a {best[1] * 100:.1f}% cut (threshold {best[0]:.4f}, simple kept small "
        f"{best[2] * 100:.1f}%)"
    )


def decision_times(router: Router, embedder: LocalEmbedder, texts: Sequence[str], calls: int) -> dict[str, list[float]]:
    """Microseconds per call, each timed alone after a warm-up: Router.decide on a cached embedding, and the
    embedding call alone on the same texts (fewer calls: it is ~10^4 times slower)."""
    cases: dict[str, tuple[Callable[[str], object], int]] = {
        "Router.decide, embedding cached": (router.decide, calls),
        "baseline: LocalEmbedder.embed, one text": (lambda t: embedder.embed([t]), max(calls // 10, 20)),
    }
    out: dict[str, list[float]] = {}
    for name, (run, n) in cases.items():
        for i in range(20):
            run(texts[i % len(texts)])
        timings = []
        for i in range(n):
            start = time.perf_counter_ns()
            run(texts[i % len(texts)])
            timings.append((time.perf_counter_ns() - start) / 1000)
        out[name] = timings
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests in each 70/30 mix (default 1000)")
    parser.add_argument("--seed", type=int, default=20261126, help="sampling seed")
    parser.add_argument("--timed", type=int, default=2000, help="timed Router.decide calls (default 2000)")
    args = parser.parse_args()
    OUT.print(f"[bold]bench.routing[/bold] · {machine_note()}")
    training, independent = training_examples(), load_examples(INDEPENDENT)
    texts = [e.text for e in training + independent]
    embedder = LocalEmbedder()
    with ERR.status(f"embedding {len(set(texts))} distinct texts (LocalEmbedder, batched)…"):
        embed = lookup_embed(texts, embedder)
        distinct = sorted(set(texts))
        tokens = dict(zip(distinct, bundled_token_counter().count_many(distinct), strict=True))
    classifier = Classifier.load()
    router = Router(RuleSettings(), classifier, embed)
    target = float(classifier.metrics.get("target_recall", TARGET_RECALL))
    scored = [*heldout_scored(router, training), loco_scored(training, embed, target),
              Scored("independent set (evaluation only)", independent,
                     [router.decide(e.text).tier == "large" for e in independent])]  # fmt: skip
    rows = [row(s, tokens, args.requests, args.seed) for s in scored]
    OUT.print(table(
        f"Routing quality and cost (70/30 mixes of {args.requests} requests; threshold {classifier.threshold:.4f}, "
        f"second-stage band {classifier.band:.2f}, procedure's recall target {target:.2f})",
        ["evaluation", "examples", "complex recall", "simple kept small", "cost cut vs all-large", "oracle cut"],
        [[r.name, r.examples, f"{r.complex_recall * 100:.1f}%", f"{r.simple_to_small * 100:.1f}%",
          f"{r.cut * 100:.1f}%", f"{r.oracle_cut * 100:.1f}%"] for r in rows],
    ))  # fmt: skip
    second = sum("second stage" in router.decide(e.text).reason for e in independent)
    OUT.print(f"independent set: the second stage sent {second} of {len(independent)} requests to large")
    OUT.print(frontier(classifier, independent, embed, tokens, args.requests, args.seed))
    timings = decision_times(router, embedder, [e.text for e in independent], args.timed)
    base = percentile(timings["baseline: LocalEmbedder.embed, one text"], 50)
    OUT.print(table("Decision time, one request at a time, microseconds", ["case", "calls", "p50 µs", "p99 µs",
                    "p50 / embedding p50"], [[n, len(us), percentile(us, 50), percentile(us, 99),
                    percentile(us, 50) / base] for n, us in timings.items()]))  # fmt: skip
    decide_p99 = percentile(timings["Router.decide, embedding cached"], 99)
    final = rows[-1]
    met = final.complex_recall >= TARGET_RECALL and final.cut >= TARGET_CUT and decide_p99 < TARGET_DECIDE_US
    detail = (
        f"independent set: recall {final.complex_recall * 100:.1f}%, cut {final.cut * 100:.1f}% (oracle "
        f"{final.oracle_cut * 100:.1f}%); Router.decide p99 {decide_p99:.0f} µs; assumed: output {OUTPUT_TOKENS} "
        f"tokens per request, prices USD/M tokens (in, out) small {PRICES['small']}, large {PRICES['large']}"
    )
    target_text = f"recall >= {TARGET_RECALL:.0%}, cut >= {TARGET_CUT:.0%}, decide < 1 ms"
    OUT.print(verdict("routing on unseen data, cost vs all-large", 1 - final.cut, target_text, met, detail))


if __name__ == "__main__":
    main()
