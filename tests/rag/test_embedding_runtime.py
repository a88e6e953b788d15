"""The default runtime (ONNX Runtime) gives the previous runtime's vectors, from pinned files, in its window.

The previous runtime's vectors (sentence-transformers on PyTorch) are stored in embedding_reference.json
(embedding_reference_make.py says how they were made): collections embedded before keep working only if
the new vectors match them, which is held here far above the 0.999 cosine the issue asks for.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from core.errors import ConfigurationError
from rag.chunking import bundled_model_dir
from rag.embedding import LocalEmbedder
from rag.local_model import FEW_TEXTS, OnnxMiniLM, _check_weights
from rag.minilm_graph import GRAPH_FILE, TOKENIZER_SHA256, WEIGHTS_SHA256, build_graph

REFERENCE = json.loads((Path(__file__).resolve().parent / "embedding_reference.json").read_text())
TEXTS: list[str] = REFERENCE["texts"]
EXPECTED = np.stack([np.frombuffer(base64.b64decode(v), dtype="<f4") for v in REFERENCE["vectors"]])


@pytest.fixture(scope="module")
def model() -> OnnxMiniLM:
    return OnnxMiniLM(batch_size=8, threads=0)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30))


def test_model_files_are_the_pinned_ones_and_the_graph_is_reproducible() -> None:
    model_dir = bundled_model_dir()
    assert hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest() == WEIGHTS_SHA256
    assert hashlib.sha256((model_dir / "tokenizer.json").read_bytes()).hexdigest() == TOKENIZER_SHA256
    assert build_graph(model_dir / "model.safetensors").SerializeToString() == GRAPH_FILE.read_bytes()


def test_batched_vectors_are_the_previous_runtimes(model: OnnxMiniLM) -> None:
    assert len(TEXTS) > 8 * FEW_TEXTS  # sorted into several padded batches of 8
    vectors = model.vectors(TEXTS)

    cosines = _cosines(vectors, EXPECTED)
    assert cosines.min() >= 0.99999, f"lowest cosine {cosines.min():.6f} for {TEXTS[int(cosines.argmin())]!r}"
    assert np.abs(vectors - EXPECTED).max() < 1e-5
    assert np.allclose(np.linalg.norm(vectors[1:], axis=1), 1.0, atol=1e-5)  # unit vectors, as the spec records


def test_a_few_texts_in_one_pass_give_the_same_vectors(model: OnnxMiniLM) -> None:
    few = [TEXTS[-1], TEXTS[0], TEXTS[-2], "refunds"]  # long, mid-length and short, padded to the longest
    expected = np.stack([EXPECTED[TEXTS.index(t)] for t in few])

    assert np.abs(model.vectors(few) - expected).max() < 1e-5


def test_every_query_finds_the_neighbours_it_found_before(model: OnnxMiniLM) -> None:
    vectors = model.vectors(TEXTS)
    before = np.argsort(-(EXPECTED @ EXPECTED.T), axis=1)[:, :5]
    after = np.argsort(-(vectors @ EXPECTED.T), axis=1)[:, :5]  # new queries against stored vectors

    assert (before == after).all()


def test_texts_are_cut_at_the_models_256_tokens_not_the_files_128(model: OnnxMiniLM) -> None:
    assert len(model.tokenizer.encode(" ".join(["the"] * 200)).ids) == 202  # not cut at 128
    assert len(model.tokenizer.encode(" ".join(["the"] * 400)).ids) == 256
    batch = model.tokenizer.encode_batch(["a", "a b c"])
    assert [len(e.ids) for e in batch] == [3, 5]  # no fixed padding: each batch is padded to its longest


def test_embedder_gives_plain_float_lists() -> None:
    out = LocalEmbedder(threads=1).embed(TEXTS[:2])
    assert len(out) == 2 and len(out[0]) == 384 and isinstance(out[0][0], float)
    assert np.abs(np.array(out) - EXPECTED[:2]).max() < 1e-5


def test_a_weights_file_of_another_layout_is_refused(tmp_path: Path) -> None:
    tensor = {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]}
    header = json.dumps({"embeddings.word_embeddings.weight": tensor})
    other = tmp_path / "model.safetensors"
    other.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 4)

    with pytest.raises(ConfigurationError, match="not the all-MiniLM-L6-v2 weights file"):
        _check_weights(other)
    with pytest.raises(ConfigurationError, match="missing"):
        _check_weights(tmp_path / "absent.safetensors")


def test_the_torch_runtime_without_the_gpu_extra_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # as in the default install: not importable

    with pytest.raises(ConfigurationError, match=r"gpu extra.*uv sync --extra gpu"):
        LocalEmbedder(runtime="torch").embed(["x"])
