"""Routing cost and quality: the router on a 70/30 simple/complex mix from the HELD-OUT split.

Requests: the held-out split of routing/data/requests.jsonl (Example.heldout, 25% by id hash, never trained on),
sampled with a fixed seed WITH replacement to `--requests` (default 1,000): 70% from its simple examples, 30% from
its complex ones (the split holds far fewer distinct examples, so each appears several times).
Decisions: Router(RuleSettings(), Classifier.load(), embed) as the product builds it; the embeddings of the distinct
held-out texts are computed once in batches with LocalEmbedder and `embed` looks them up. Compared in the same run:
the classifier alone (P(complex) >= its threshold), the rules alone (Router without classifier: what the rules
leave undecided goes to the largest tier, as the product does), everything to large (the baseline), everything to
small, and an oracle that knows the labels (the best any router can do under this cost model).

Cost model (stated, not measured): prices routing/fleet.py ASSUMED_SMALL_PRICES / ASSUMED_LARGE_PRICES, USD per
million tokens (in, out). Input tokens = the request's own token count with the MiniLM (all-MiniLM-L6-v2 WordPiece)
tokenizer, no special tokens; output tokens = OUTPUT_TOKENS (300) for every request, whatever its class. The target
compares the same requests sent to large or routed, so each request is priced with the same tokens on either tier
and the cut measures the routing decisions alone.
Sensitivity (printed, not the verdict): the same decisions priced with other output sizes, including a
length-weighted model in which complex answers are 4x longer (150 simple / 600 complex). There complex requests are
most of the all-large bill and must stay on large, so even the oracle cuts only ~35%: that model measures how much
of a bill is complex work, not how well a router decides.
Target: the router cuts cost >= 60% vs all-to-large at complex recall >= 95%.

    .venv/bin/python -m bench.routing [--requests N] [--seed S]
"""

from __future__ import annotations

import argparse
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench._report import ERR, OUT, machine_note, table, verdict
from rag.chunking import bundled_token_counter
from rag.embedding import LocalEmbedder
from routing.classifier import Classifier, Example, load_examples
from routing.fleet import ASSUMED_LARGE_PRICES, ASSUMED_SMALL_PRICES
from routing.router import Router
from routing.rules import RuleSettings

SIMPLE_SHARE = 0.70
OUTPUT_TOKENS = 300
SAME_OUTPUT = {"simple": OUTPUT_TOKENS, "complex": OUTPUT_TOKENS}
LENGTH_WEIGHTED = {"simple": 150, "complex": 600}
PRICES = {"small": ASSUMED_SMALL_PRICES, "large": ASSUMED_LARGE_PRICES}
TARGET_CUT = 0.60
TARGET_RECALL = 0.95

Strategy = Callable[[Example], str]  # a request -> the tier that answers it


@dataclass(frozen=True)
class Outcome:
    name: str
    cost_usd: float
    complex_recall: float  # complex requests sent to large / all complex
    simple_to_small: float  # simple requests sent to small / all simple
    large_share: float
    accuracy: float


def heldout_mix(n: int, seed: int) -> tuple[list[Example], list[Example]]:
    """`n` requests, SIMPLE_SHARE simple, sampled with replacement from the held-out split; and the split."""
    heldout = [e for e in load_examples() if e.heldout]
    simple = [e for e in heldout if not e.complex]
    hard = [e for e in heldout if e.complex]
    rng = random.Random(seed)
    n_simple = round(n * SIMPLE_SHARE)
    mix = rng.choices(simple, k=n_simple) + rng.choices(hard, k=n - n_simple)
    rng.shuffle(mix)
    return mix, heldout


def lookup_embed(texts: Sequence[str], embedder: LocalEmbedder) -> Callable[[list[str]], list[list[float]]]:
    """Embed each distinct text once (batched); the returned function looks vectors up."""
    distinct = sorted(set(texts))
    vectors = dict(zip(distinct, embedder.embed(distinct), strict=True))

    def embed(batch: list[str]) -> list[list[float]]:
        return [vectors[t] for t in batch]

    return embed


def request_cost(example: Example, tier: str, tokens_in: int, output: dict[str, int]) -> float:
    price_in, price_out = PRICES[tier]
    return (tokens_in * price_in + output[example.label] * price_out) / 1_000_000


def evaluate_strategy(
    name: str, choose: Strategy, mix: Sequence[Example], tokens: dict[str, int], output: dict[str, int] = SAME_OUTPUT
) -> Outcome:
    tiers = [choose(e) for e in mix]
    complex_total = sum(e.complex for e in mix) or 1
    simple_total = sum(not e.complex for e in mix) or 1
    return Outcome(
        name=name,
        cost_usd=sum(request_cost(e, t, tokens[e.text], output) for e, t in zip(mix, tiers, strict=True)),
        complex_recall=sum(e.complex and t == "large" for e, t in zip(mix, tiers, strict=True)) / complex_total,
        simple_to_small=sum(not e.complex and t == "small" for e, t in zip(mix, tiers, strict=True)) / simple_total,
        large_share=sum(t == "large" for t in tiers) / len(mix),
        accuracy=sum((t == "large") == e.complex for e, t in zip(mix, tiers, strict=True)) / len(mix),
    )


def strategies(
    routed: Router, classifier: Classifier, embed: Callable[[list[str]], list[list[float]]]
) -> dict[str, Strategy]:
    rules_only = Router(RuleSettings(), None, embed)

    def classifier_alone(e: Example) -> str:
        [p] = classifier.probability(embed([e.text]))
        return "large" if p >= classifier.threshold else "small"

    return {
        "router (rules + classifier)": lambda e: routed.decide(e.text).tier,
        "classifier alone": classifier_alone,
        "rules alone (undecided -> large)": lambda e: rules_only.decide(e.text).tier,
        "all to large (baseline)": lambda e: "large",
        "all to small": lambda e: "small",
        "oracle (true labels)": lambda e: "large" if e.complex else "small",
    }


def stages(router: Router, examples: Sequence[Example]) -> str:
    counts = Counter(router.decide(e.text).stage for e in examples)
    return ", ".join(f"{stage} {n}" for stage, n in counts.most_common())


def cuts(
    chosen: dict[str, Strategy], mix: Sequence[Example], tokens: dict[str, int], output: dict[str, int]
) -> list[float]:
    """Cost cut vs all-large of the router and of the oracle, with `output` tokens per class."""
    base = evaluate_strategy("all", chosen["all to large (baseline)"], mix, tokens, output).cost_usd
    return [1 - evaluate_strategy(n, chosen[n], mix, tokens, output).cost_usd / base
            for n in ("router (rules + classifier)", "oracle (true labels)")]  # fmt: skip


def sensitivity(chosen: dict[str, Strategy], mix: Sequence[Example], tokens: dict[str, int]) -> None:
    """The same decisions priced with other output sizes: how much the verdict owes to the cost model."""
    rows = []
    for output in (SAME_OUTPUT, {"simple": 150, "complex": 150}, {"simple": 600, "complex": 600}, LENGTH_WEIGHTED,
                   {"simple": 600, "complex": 150}):  # fmt: skip
        note = " (verdict)" if output == SAME_OUTPUT else " (length-weighted)" if output == LENGTH_WEIGHTED else ""
        rows.append([f"{output['simple']} / {output['complex']}{note}",
                     *(f"{c * 100:.1f}%" for c in cuts(chosen, mix, tokens, output))])  # fmt: skip
    headers = ["output tokens simple / complex", "router cost cut", "oracle cost cut"]
    OUT.print(table("Sensitivity of the cost cut to the output sizes (same decisions, same prices)", headers, rows))
    router, oracle = cuts(chosen, mix, tokens, LENGTH_WEIGHTED)
    weighted = f"{LENGTH_WEIGHTED['simple']} / {LENGTH_WEIGHTED['complex']}"
    OUT.print(f"length-weighted ({weighted}): router {router * 100:.1f}%, oracle {oracle * 100:.1f}%. There complex "
              "answers are 4x longer, so complex requests are most of the all-large bill and must stay on large: no "
              "router reaches a 60% cut, and the figure says how much of the bill is complex work, not how well the "
              "router decides.")  # fmt: skip


def report(outcomes: list[Outcome], mix: Sequence[Example], heldout: int, tokens: dict[str, int]) -> None:
    base = next(o for o in outcomes if o.name.startswith("all to large")).cost_usd
    per_k = 1000 / len(mix)
    rows = [
        [o.name, o.cost_usd * per_k, f"{(1 - o.cost_usd / base) * 100:.1f}%", f"{o.complex_recall * 100:.1f}%",
         f"{o.simple_to_small * 100:.1f}%", f"{o.large_share * 100:.1f}%", f"{o.accuracy * 100:.1f}%"]
        for o in outcomes
    ]  # fmt: skip
    n_complex = sum(e.complex for e in mix)
    mean_in = sum(tokens[e.text] for e in mix) / len(mix)
    title = (f"Routing on {len(mix)} requests ({len(mix) - n_complex} simple / {n_complex} complex) sampled with "
             f"replacement from the {heldout} held-out examples; mean input {mean_in:.0f} MiniLM tokens")  # fmt: skip
    headers = ["strategy", "USD / 1k requests", "cost cut vs all-large", "complex recall", "simple -> small",
               "sent to large", "accuracy"]  # fmt: skip
    OUT.print(table(title, headers, rows))


def final_verdict(outcomes: list[Outcome], mean_in: float) -> None:
    """The verdict, last: the router's cut and recall, with the cost model it rests on."""
    base = next(o for o in outcomes if o.name.startswith("all to large")).cost_usd
    assumed = (f"assumed: input = the prompt's own MiniLM tokens (mean {mean_in:.0f}), output {OUTPUT_TOKENS} tokens "
               f"per request whatever its class; prices USD/M tokens (in, out) small {PRICES['small']}, large "
               f"{PRICES['large']}")  # fmt: skip
    routed = outcomes[0]
    ratio = routed.cost_usd / base
    met = 1 - ratio >= TARGET_CUT and routed.complex_recall >= TARGET_RECALL
    oracle = next(o for o in outcomes if o.name.startswith("oracle"))
    detail = (f"cut {(1 - ratio) * 100:.1f}% at complex recall {routed.complex_recall * 100:.1f}%; the oracle's "
              f"cut is {(1 - oracle.cost_usd / base) * 100:.1f}%; {assumed}")  # fmt: skip
    OUT.print(verdict("routing cost vs all-large", ratio, f"cut >= {TARGET_CUT:.0%} at recall >= {TARGET_RECALL:.0%}",
                      met, detail))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests in the mix (default 1000)")
    parser.add_argument("--seed", type=int, default=20261126, help="sampling seed")
    args = parser.parse_args()
    OUT.print(f"[bold]bench.routing[/bold] · {machine_note()}")
    mix, heldout = heldout_mix(args.requests, args.seed)
    texts = sorted({e.text for e in heldout})
    with ERR.status(f"embedding {len(texts)} distinct held-out texts (LocalEmbedder, batched)…"):
        embed = lookup_embed(texts, LocalEmbedder())
        tokens = dict(zip(texts, bundled_token_counter().count_many(texts), strict=True))
    classifier = Classifier.load()
    router = Router(RuleSettings(), classifier, embed)
    chosen = strategies(router, classifier, embed)
    outcomes = [evaluate_strategy(name, choose, mix, tokens) for name, choose in chosen.items()]
    report(outcomes, mix, len(heldout), tokens)
    once = evaluate_strategy("router", chosen["router (rules + classifier)"], heldout, tokens)
    n_complex = sum(e.complex for e in heldout)
    OUT.print(f"router decisions by stage on the mix: {stages(router, mix)}")
    OUT.print(f"router on the {len(heldout)} distinct held-out examples, each once ({len(heldout) - n_complex} "
              f"simple / {n_complex} complex): complex recall {once.complex_recall * 100:.1f}%, simple -> small "
              f"{once.simple_to_small * 100:.1f}%")  # fmt: skip
    sensitivity(chosen, mix, tokens)
    final_verdict(outcomes, sum(tokens[e.text] for e in mix) / len(mix))


if __name__ == "__main__":
    main()
