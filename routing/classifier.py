"""Classifier stage: logistic regression on sentence embeddings, P(request needs the large model).

Trained by `orchestrion router train` on routing/data/requests.jsonl with a held-out
split chosen by a hash of each example's id, so the split (and the artefact) are the
same on every machine. The artefact is only coefficients: 384 weights, a bias and the
threshold, in routing/data/classifier.json.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"
DATASET = DATA_DIR / "requests.jsonl"
ARTEFACT = DATA_DIR / "classifier.json"
HELDOUT_PERCENT = 25


@dataclass(frozen=True)
class Example:
    id: str
    text: str
    label: str  # "simple" | "complex"
    category: str = ""

    @property
    def heldout(self) -> bool:
        return int(hashlib.sha256(self.id.encode()).hexdigest(), 16) % 100 < HELDOUT_PERCENT

    @property
    def complex(self) -> bool:
        return self.label == "complex"


def load_examples(path: Path = DATASET) -> list[Example]:
    return [Example(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class Classifier:
    embedding_model: str
    weights: list[float]
    bias: float
    threshold: float
    metrics: dict[str, Any]

    def probability(self, vectors: Sequence[Sequence[float]]) -> list[float]:
        z = np.asarray(vectors, dtype=np.float64) @ self._weights() + self.bias
        return [float(p) for p in 1.0 / (1.0 + np.exp(-z))]

    def _weights(self) -> np.ndarray:
        cached: np.ndarray | None = self.__dict__.get("_array")
        if cached is None:
            cached = np.asarray(self.weights, dtype=np.float64)
            object.__setattr__(self, "_array", cached)  # frozen dataclass: a private memo
        return cached

    def save(self, path: Path = ARTEFACT) -> None:
        data = asdict(self)
        data["weights"] = [round(w, 6) for w in self.weights]
        path.write_text(json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path = ARTEFACT) -> Classifier:
        return cls(**json.loads(path.read_text()))


def fit_logistic(
    x: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 3000, rate: float = 2.0
) -> tuple[np.ndarray, float]:
    """Full-batch gradient descent with L2: deterministic, no extra dependency, fast at this size.
    Classes are weighted so the minority class counts as much as the majority."""
    n, d = x.shape
    weight = np.where(y == 1, n / (2 * max(y.sum(), 1)), n / (2 * max(n - y.sum(), 1)))
    w, b = np.zeros(d), 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
        grad = (p - y) * weight
        w -= rate * (x.T @ grad / n + l2 * w)
        b -= rate * float(grad.mean())
    return w, b


def threshold_for_recall(probabilities: Sequence[float], complex_labels: Sequence[bool], recall: float) -> float:
    """The highest threshold that still sends at least `recall` of complex requests to the large tier."""
    scores = sorted((p for p, c in zip(probabilities, complex_labels, strict=True) if c), reverse=True)
    if not scores:
        return 0.5
    keep = max(1, int(np.ceil(recall * len(scores))))
    return float(scores[keep - 1])


def evaluate(decide_large: Sequence[bool], examples: Sequence[Example]) -> dict[str, float]:
    complex_total = sum(e.complex for e in examples) or 1
    caught = sum(large and e.complex for large, e in zip(decide_large, examples, strict=True))
    correct = sum(large == e.complex for large, e in zip(decide_large, examples, strict=True))
    return {
        "examples": len(examples),
        "accuracy": round(correct / len(examples), 4),
        "complex_recall": round(caught / complex_total, 4),
        "large_share": round(sum(decide_large) / len(examples), 4),
    }


def train(
    embed: Callable[[list[str]], list[list[float]]],
    embedding_model: str,
    examples: Sequence[Example],
    target_recall: float = 0.99,
) -> Classifier:
    """Fit on the training split, pick the threshold on it for `target_recall`, report the held-out split."""
    train_set = [e for e in examples if not e.heldout]
    heldout = [e for e in examples if e.heldout]
    x = np.asarray(embed([e.text for e in train_set]), dtype=np.float64)
    y = np.asarray([1.0 if e.complex else 0.0 for e in train_set])
    w, b = fit_logistic(x, y)
    train_p = list(1.0 / (1.0 + np.exp(-(x @ w + b))))
    threshold = threshold_for_recall(train_p, [e.complex for e in train_set], target_recall)
    model = Classifier(embedding_model, [float(v) for v in w], float(b), threshold, {})
    held_p = model.probability(embed([e.text for e in heldout])) if heldout else []
    metrics = {
        "target_recall": target_recall,
        "train": evaluate([p >= threshold for p in train_p], train_set),
        "heldout": evaluate([p >= threshold for p in held_p], heldout) if heldout else {},
        "dataset_sha256": hashlib.sha256(DATASET.read_bytes()).hexdigest() if DATASET.exists() else "",
    }
    return Classifier(embedding_model, model.weights, model.bias, threshold, metrics)
