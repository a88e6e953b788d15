"""Classifier stage: logistic regression on a sentence embedding plus surface cues, P(request needs the large model).

Trained by `orchestrion router train` on the training files (routing/data/requests.jsonl and
requests-extra.jsonl) with a held-out split chosen by a hash of each example's id, so the split (and the
artefact) are the same on every machine. The threshold is chosen for a recall target on scores the model gave
to examples it was not fitted on (cross-validation with whole categories held out), not on its own training
scores: those are higher than any unseen request's, and a threshold set on them misses unseen complex requests.
The artefact is only numbers: 384 embedding weights, one weight per cue (routing/cues.py), a bias, the threshold
and the second stage's band, in routing/data/classifier.json. routing/data/independent.jsonl is evaluation-only:
nothing here reads it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigurationError
from routing.cues import FEATURE_NAMES, features

DATA_DIR = Path(__file__).resolve().parent / "data"
DATASET = DATA_DIR / "requests.jsonl"
EXTRA_DATASET = DATA_DIR / "requests-extra.jsonl"
TRAINING_FILES = (DATASET, EXTRA_DATASET)
INDEPENDENT = DATA_DIR / "independent.jsonl"  # evaluation only: never passed to train()
ARTEFACT = DATA_DIR / "classifier.json"
HELDOUT_PERCENT = 25
CUE_SCALE = 0.5  # cue values are 0..1, embedding components ~0.05: one L2 penalty must suit both
L2 = 1.0
CV_FOLDS = 8
# The second stage (Router): a request scored below the threshold by less than SECOND_STAGE_BAND goes large when a
# hard cue other than the broad "explain_why" is present. Band and cue set were chosen on leave-one-category-out
# scores of the training files (bench/results/routing.md): +3.7 points of recall there for -3.8 of simple kept small.
SECOND_STAGE_BAND = 0.10


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


def training_examples() -> list[Example]:
    """Every training file's examples (the independent evaluation set is not among them)."""
    return [e for path in TRAINING_FILES for e in load_examples(path)]


def datasets_sha256() -> str:
    digest = hashlib.sha256()
    for path in TRAINING_FILES:
        digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Classifier:
    embedding_model: str
    weights: list[float]  # one per embedding dimension
    bias: float
    threshold: float
    metrics: dict[str, Any]
    feature_names: list[str] = field(default_factory=list)  # the cues it was trained with, in order
    feature_weights: list[float] = field(default_factory=list)
    band: float = 0.0  # second stage: below the threshold by less than this, a hard cue sends a request large

    def probability(self, vectors: Sequence[Sequence[float]], texts: Sequence[str] | None = None) -> list[float]:
        """P(complex) per request: its embedding, and its text for the cues (required when trained with cues)."""
        z = np.asarray(vectors, dtype=np.float64) @ self._weights() + self.bias
        if self.feature_weights:
            if texts is None or len(texts) != len(z):
                raise ValueError("this classifier reads cues: pass the texts beside their embeddings")
            z = z + np.asarray([features(t) for t in texts], dtype=np.float64) @ self._cue_weights()
        return [float(p) for p in 1.0 / (1.0 + np.exp(-z))]

    def _weights(self) -> np.ndarray:
        return self._memo("_array", self.weights, 1.0)

    def _cue_weights(self) -> np.ndarray:
        return self._memo("_cue_array", self.feature_weights, CUE_SCALE)

    def _memo(self, name: str, values: list[float], scale: float) -> np.ndarray:
        cached: np.ndarray | None = self.__dict__.get(name)
        if cached is None:
            cached = np.asarray(values, dtype=np.float64) * scale
            object.__setattr__(self, name, cached)  # frozen dataclass: a private memo
        return cached

    def save(self, path: Path = ARTEFACT) -> None:
        data = asdict(self)
        data["weights"] = [round(w, 6) for w in self.weights]
        data["feature_weights"] = [round(w, 6) for w in self.feature_weights]
        path.write_text(json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path = ARTEFACT) -> Classifier:
        model = cls(**json.loads(path.read_text()))
        if model.feature_names and model.feature_names != list(FEATURE_NAMES):
            raise ConfigurationError(
                f"{path} was trained with other cues than routing/cues.py defines: run `orchestrion router train`"
            )
        return model


def design_matrix(vectors: Sequence[Sequence[float]], texts: Sequence[str]) -> np.ndarray:
    """Embedding and scaled cues side by side: the inputs the classifier's weights multiply."""
    cues = np.asarray([features(t) for t in texts], dtype=np.float64).reshape(len(texts), len(FEATURE_NAMES))
    return np.hstack([np.asarray(vectors, dtype=np.float64), cues * CUE_SCALE])


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2, steps: int = 12) -> tuple[np.ndarray, float]:
    """L2-penalised logistic regression by Newton's method: deterministic, no extra dependency, a few ms at
    this size. Classes are weighted so the minority class counts as much as the majority."""
    n, d = x.shape
    weight = np.where(y == 1, n / (2 * max(y.sum(), 1)), n / (2 * max(n - y.sum(), 1)))
    design = np.hstack([x, np.ones((n, 1))])
    penalty = l2 * np.eye(d + 1)
    penalty[-1, -1] = 0.0  # the bias is not penalised
    w = np.zeros(d + 1)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(design @ w)))
        gradient = design.T @ ((p - y) * weight) + penalty @ w
        hessian = (design * (p * (1 - p) * weight)[:, None]).T @ design + penalty
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-6:
            break
    return w[:-1], float(w[-1])


def predict(w: np.ndarray, b: float, x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-(x @ w + b))))


def threshold_for_recall(probabilities: Sequence[float], complex_labels: Sequence[bool], recall: float) -> float:
    """The highest threshold that still sends at least `recall` of complex requests to the large tier."""
    scores = sorted((p for p, c in zip(probabilities, complex_labels, strict=True) if c), reverse=True)
    if not scores:
        return 0.5
    keep = max(1, int(np.ceil(recall * len(scores))))
    return float(scores[keep - 1])


def category_folds(examples: Sequence[Example], folds: int = CV_FOLDS) -> list[int]:
    """A fold per example, whole categories together (by a hash of the category): each fold's scores come from a
    model that saw no example of those categories."""
    return [int(hashlib.sha256(e.category.encode()).hexdigest(), 16) % folds for e in examples]


def out_of_fold(x: np.ndarray, y: np.ndarray, folds: Sequence[int]) -> np.ndarray:
    """Each example's score from a model fitted without its fold."""
    scores = np.zeros(len(y))
    fold_of = np.asarray(folds)
    for fold in sorted(set(folds)):
        test = fold_of == fold
        w, b = fit_logistic(x[~test], y[~test])
        scores[test] = predict(w, b, x[test])
    return scores


def evaluate(decide_large: Sequence[bool], examples: Sequence[Example]) -> dict[str, float]:
    complex_total = sum(e.complex for e in examples) or 1
    simple_total = sum(not e.complex for e in examples) or 1
    pairs = list(zip(decide_large, examples, strict=True))
    return {
        "examples": len(examples),
        "accuracy": round(sum(large == e.complex for large, e in pairs) / len(examples), 4),
        "complex_recall": round(sum(large and e.complex for large, e in pairs) / complex_total, 4),
        "simple_to_small": round(sum(not large and not e.complex for large, e in pairs) / simple_total, 4),
        "large_share": round(sum(decide_large) / len(examples), 4),
    }


def fitted(
    x: np.ndarray, y: np.ndarray, examples: Sequence[Example], target_recall: float
) -> tuple[np.ndarray, float, float]:
    """Weights, bias and threshold: the threshold meets `target_recall` on out-of-fold scores."""
    w, b = fit_logistic(x, y)
    scores = out_of_fold(x, y, category_folds(examples))
    return w, b, threshold_for_recall(list(scores), [bool(v) for v in y], target_recall)


def train(
    embed: Callable[[list[str]], list[list[float]]],
    embedding_model: str,
    examples: Sequence[Example],
    target_recall: float = 0.95,
) -> Classifier:
    """Fit on the training split, choose the threshold by cross-validation on it, report the held-out split."""
    train_set = [e for e in examples if not e.heldout]
    heldout = [e for e in examples if e.heldout]
    x = design_matrix(embed([e.text for e in train_set]), [e.text for e in train_set])
    y = np.asarray([1.0 if e.complex else 0.0 for e in train_set])
    w, b, threshold = fitted(x, y, train_set, target_recall)
    dim = len(x[0]) - len(FEATURE_NAMES)
    model = Classifier(embedding_model, [float(v) for v in w[:dim]], b, threshold, {}, list(FEATURE_NAMES),
                       [float(v) for v in w[dim:]])  # fmt: skip
    train_p = list(predict(w, b, x))
    held_p = model.probability(embed([e.text for e in heldout]), [e.text for e in heldout]) if heldout else []
    metrics = {
        "target_recall": target_recall,
        "train": evaluate([p >= threshold for p in train_p], train_set),
        "heldout": evaluate([p >= threshold for p in held_p], heldout) if heldout else {},
        "dataset_sha256": datasets_sha256(),
    }
    return Classifier(embedding_model, model.weights, b, threshold, metrics, model.feature_names,
                      model.feature_weights, SECOND_STAGE_BAND)  # fmt: skip


def leave_one_category_out(
    x: np.ndarray, y: np.ndarray, examples: Sequence[Example], target_recall: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per example: its score from a model trained without its whole category, and the threshold the training
    procedure (fitted(), on that fold's examples alone) chose for that model. How the router does on a kind of
    request it has never seen."""
    scores, thresholds = np.zeros(len(y)), np.zeros(len(y))
    categories = np.asarray([e.category for e in examples])
    for category in sorted(set(categories)):
        test = categories == category
        rest = [e for e, held in zip(examples, test, strict=True) if not held]
        w, b, threshold = fitted(x[~test], y[~test], rest, target_recall)
        scores[test], thresholds[test] = predict(w, b, x[test]), threshold
    return scores, thresholds
