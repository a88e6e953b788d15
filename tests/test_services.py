"""The session's real services answer as the later layers will use them."""

from __future__ import annotations

import json
import uuid

import httpx
import redis
import weaviate
from weaviate.classes.config import Configure, DataType, Property
from weaviate.classes.tenants import Tenant


def test_valkey_round_trip(valkey: str, key_prefix: str) -> None:
    client = redis.Redis.from_url(valkey)
    client.set(f"{key_prefix}:k", "v")
    assert client.get(f"{key_prefix}:k") == b"v"
    assert client.config_get("appendonly")["appendonly"] == "yes"


def test_weaviate_multi_tenancy_with_own_vectors_over_grpc(weaviate: dict[str, str]) -> None:
    http = httpx.URL(weaviate["weaviate_url"])
    grpc_host, grpc_port = weaviate["weaviate_grpc"].rsplit(":", 1)
    name = f"Smoke_{uuid.uuid4().hex[:8]}"
    with weaviate_client(http.host, http.port, grpc_host, int(grpc_port)) as client:
        collection = client.collections.create(
            name,
            properties=[Property(name="text", data_type=DataType.TEXT)],
            multi_tenancy_config=Configure.multi_tenancy(enabled=True),
            vector_config=Configure.Vectors.self_provided(),
        )
        collection.tenants.create([Tenant(name="a"), Tenant(name="b")])
        collection.with_tenant("a").data.insert({"text": "only in a"}, vector=[1.0, 0.0, 0.0])

        hits_a = collection.with_tenant("a").query.near_vector([1.0, 0.0, 0.0], limit=5).objects
        hits_b = collection.with_tenant("b").query.near_vector([1.0, 0.0, 0.0], limit=5).objects

        assert [o.properties["text"] for o in hits_a] == ["only in a"]
        assert hits_b == []
        client.collections.delete(name)


def weaviate_client(host: str, port: int, grpc_host: str, grpc_port: int) -> weaviate.WeaviateClient:
    return weaviate.connect_to_custom(
        http_host=host, http_port=port, http_secure=False, grpc_host=grpc_host, grpc_port=grpc_port, grpc_secure=False
    )


def test_local_llm_streams_a_chat_completion(local_llm: str) -> None:
    request = {
        "model": "local",
        "messages": [{"role": "user", "content": "Name one colour."}],
        "stream": True,
        "max_tokens": 16,
    }
    pieces = []
    with httpx.stream("POST", f"{local_llm}/chat/completions", json=request, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"][0]["delta"]
                pieces.append(delta.get("content") or "")
    assert len(pieces) >= 2, "expected a streamed answer in several chunks"
    assert "".join(pieces).strip()


def test_the_local_model_build_has_no_instructions_beyond_its_cpu_level() -> None:
    """`./run` caches the llama.cpp wheel across machines; a -march=native build from an AVX-512 host died of
    SIGILL (exit 132) on a Haswell CPU under `qemu-x86_64 -cpu Haswell` and on CI's machine. The x86-64-v3
    build must not contain one AVX-512 instruction (zmm/k-mask registers)."""
    import re
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import llama_cpp

    marker = Path(sys.prefix) / ".llama-cpp-build"
    if not marker.exists() or not marker.read_text().split()[1:] == ["x86-64-v3"]:
        raise AssertionError(f"the venv's llama.cpp build is not the x86-64-v3 one `./run` makes: {marker}")
    objdump = shutil.which("objdump")
    assert objdump, "objdump (binutils) is needed to read the build's instructions"
    libraries = sorted((Path(llama_cpp.__file__).parent / "lib").glob("libggml-cpu.so*"))
    assert libraries, "llama_cpp ships no libggml-cpu"
    code = subprocess.run([objdump, "-d", str(libraries[0])], capture_output=True, text=True, check=True).stdout
    assert re.search(r"%ymm\d", code), "no AVX2 instructions at all: the build flags were not applied"
    assert not re.search(r"%zmm\d|%k[1-7]\b", code), "AVX-512 instructions in an x86-64-v3 build"
