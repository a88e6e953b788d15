"""The local embedding runtime: ONNX Runtime (the default) against sentence-transformers on PyTorch (before).

Every figure is measured for both runtimes in the same run, each in its own fresh process (so neither one's
threads or imports touch the other's numbers), and printed with the ratio:

  cold       a new interpreter until its first vector (`rag.local_model.load_model(...).vectors(["warm-up"])`,
             what the servers' model process does before it says ready), wall and CPU; bytecode cached.
  throughput chunks/s over chunks of the model's full 256-token window (cut from samples/corpus), 2 cores:
             torch as the product ran it (2 threads, encode() in batches of 32), then ONNX Runtime with one
             setting changed at a time (threads, spinning, graph optimisation, batch size); torch is measured
             again between them, and each ratio is against the mean of the torch runs.
  contention six short queries embedded in the process, alone and beside one busy Python thread: whether the
             servers still need the model in a child process (rag/model_process.py).
  install    the default install (what `./run` syncs: --extra local-llm, the dev group) made afresh from the
             old and the new uv.lock into temp dirs: time (uv's cache warm) and size on disk, and the bytes of
             wheels a machine with a cold cache downloads.
  up         `orchestrion up --exit-when-ready --no-samples` in a temp data dir, twice (fresh, then warm):
             seconds until the API is healthy, as `up` prints it and from the launch of `up`.

The old runtime needs the `gpu` extra, which the default install lacks: give a venv that has it.

    UV_PROJECT_ENVIRONMENT=/tmp/venv-gpu uv sync --locked --extra gpu --extra local-llm
    flock /tmp/orchestrion-bench.lock .venv/bin/python -m bench.embedder --gpu-venv /tmp/venv-gpu
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._report import ERR, OUT, machine_note, table, verdict

ROOT = Path(__file__).resolve().parent.parent
WINDOW_TOKENS = 254  # + [CLS] and [SEP]: the model's 256
QUERIES = [
    "how are refunds handled after a timeout?",
    "retry policy",
    "what is an idempotency key",
    "tenant isolation in weaviate",
    "celery acks late",
    "p99 latency of search",
]


# --- children: each measurement runs in a fresh interpreter ----------------------------------------------


def child_cold(runtime: str) -> dict[str, float]:
    from rag.local_model import load_model

    load_model(runtime, 32, 0).vectors(["warm-up"])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": usage.ru_utime + usage.ru_stime}


def full_window_chunks(count: int) -> list[str]:
    """`count` passages of exactly WINDOW_TOKENS tokens, cut at token boundaries from samples/corpus."""
    from rag.chunking import bundled_token_counter

    tokenizer = bundled_token_counter().tokenizer
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "samples" / "corpus").iterdir()))
    offsets = tokenizer.encode(text, add_special_tokens=False).offsets
    chunks = [
        text[offsets[i][0] : offsets[i + WINDOW_TOKENS - 1][1]]
        for i in range(0, len(offsets) - WINDOW_TOKENS, WINDOW_TOKENS)
    ]
    if len(chunks) < count:
        chunks = (chunks * (count // len(chunks) + 1))[:count]
    return chunks[:count]


def child_throughput(config: dict[str, Any], chunks: int, rounds: int = 2) -> dict[str, float]:
    from rag.local_model import OnnxMiniLM, TorchMiniLM

    model: Any
    if config["runtime"] == "torch":
        model = TorchMiniLM(config["batch"], config["threads"])
    else:
        model = OnnxMiniLM(config["batch"], config["threads"], config["spinning"], config["optimization"])
    texts = full_window_chunks(chunks)
    model.vectors(texts[: config["batch"]])  # warm-up: first-run allocations, lazy init
    walls, cpus = [], []
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        model.vectors(texts)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    best = min(range(rounds), key=lambda i: walls[i])
    return {"chunks_per_s": chunks / statistics.median(walls), "cpu_ms_per_chunk": 1000 * cpus[best] / chunks}


def child_contention(runtime: str) -> dict[str, float]:
    from rag.local_model import load_model

    model = load_model(runtime, 32, 1)  # the servers' setting: one thread
    model.vectors(QUERIES)

    def median_ms(reps: int = 30) -> float:
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            model.vectors(QUERIES)
            times.append(1000 * (time.perf_counter() - started))
        return statistics.median(times)

    alone = median_ms()
    stop = threading.Event()

    def busy() -> None:  # pure Python work holding the GIL, as request handling does
        while not stop.is_set():
            sum(i * i for i in range(2000))

    spinner = threading.Thread(target=busy, daemon=True)
    spinner.start()
    try:
        beside = median_ms()
    finally:
        stop.set()
        spinner.join()
    return {"alone_ms": alone, "beside_busy_ms": beside}


# --- the parent ---------------------------------------------------------------------------------------


def run_child(python: Path, args: Sequence[str], env: dict[str, str]) -> tuple[float, dict[str, float]]:
    """Wall seconds from spawn to the child's answer, and the answer (one JSON line on stdout)."""
    started = time.perf_counter()
    done = subprocess.run(
        [str(python), "-m", "bench.embedder", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{done.stderr[-3000:]}")
    return wall, json.loads(done.stdout.strip().splitlines()[-1])


def measure_cold(pythons: dict[str, Path], env: dict[str, str], rounds: int) -> list[list[object]]:
    for runtime, python in pythons.items():  # untimed: bytecode into the cache, files into the page cache
        run_child(python, ["--child", "cold", runtime], env)
    samples: dict[str, list[tuple[float, float]]] = {r: [] for r in pythons}
    for i in range(rounds):
        for runtime, python in pythons.items():
            ERR.print(f"cold start {runtime}, round {i + 1}/{rounds}")
            wall, answer = run_child(python, ["--child", "cold", runtime], env)
            samples[runtime].append((wall, answer["cpu_s"]))
    medians = {r: (statistics.median(w for w, _ in s), statistics.median(c for _, c in s)) for r, s in samples.items()}
    torch_wall, torch_cpu = medians["torch"]
    return [[r, wall, cpu, wall / torch_wall, cpu / torch_cpu] for r, (wall, cpu) in medians.items()]


def throughput_configs() -> list[dict[str, Any]]:
    """One setting changed at a time from the product's (ORT's default threads are one per physical core: 2)."""
    varied: list[dict[str, Any]] = []
    for key, values in (
        ("threads", [1]),
        ("spinning", [True]),
        ("optimization", ["disable", "basic", "extended"]),
        ("batch", [8, 16, 64]),
    ):
        varied += [{**PRODUCT, key: value} for value in values]
    return varied


# The product's settings: rag.local_model.OnnxMiniLM in an ingest worker, and torch as it ran before.
PRODUCT: dict[str, Any] = {"runtime": "onnx", "threads": 0, "spinning": False, "optimization": "all", "batch": 32}
TORCH: dict[str, Any] = {"runtime": "torch", "threads": 2, "batch": 32}


def describe(config: dict[str, Any]) -> str:
    if config["runtime"] == "torch":
        return f"torch (sentence-transformers encode), {config['threads']} threads, batch {config['batch']}"
    threads = "ORT default" if config["threads"] == 0 else config["threads"]
    spin = "on" if config["spinning"] else "off"
    return f"onnx, threads {threads}, spinning {spin}, opt {config['optimization']}, batch {config['batch']}"


def measure_throughput(pythons: dict[str, Path], env: dict[str, str], chunks: int, rounds: int) -> list[list[object]]:
    """The product's setting against torch in alternating pairs (the comparison the target is about), then each
    variant once, between further torch runs; every ratio is against the mean of all torch runs."""
    pairs = [TORCH, PRODUCT] * rounds
    variants = throughput_configs()
    plan = [*pairs, *variants[:4], TORCH, *variants[4:], TORCH]
    runs: list[tuple[dict[str, Any], dict[str, float]]] = []
    for i, config in enumerate(plan):
        ERR.print(f"throughput {i + 1}/{len(plan)}: {describe(config)}")
        _, answer = run_child(
            pythons[config["runtime"]], ["--child", "throughput", json.dumps(config), str(chunks)], env
        )
        runs.append((config, answer))

    def summary(config: dict[str, Any]) -> tuple[float, float, str]:
        mine = [answer for c, answer in runs if c is config]
        rates = ", ".join(f"{a['chunks_per_s']:.1f}" for a in mine)
        return (statistics.mean(a["chunks_per_s"] for a in mine), statistics.mean(a["cpu_ms_per_chunk"] for a in mine),
                f" (mean of {len(mine)}: {rates})" if len(mine) > 1 else "")  # fmt: skip

    torch_rate, torch_cpu, torch_runs = summary(TORCH)
    rows: list[list[object]] = [[describe(TORCH) + torch_runs, torch_rate, torch_cpu, 1.0, 1.0]]
    for config in [PRODUCT, *variants]:
        rate, cpu, detail = summary(config)
        rows.append([describe(config) + detail, rate, cpu, rate / torch_rate, torch_cpu / cpu])
    return rows


def measure_contention(pythons: dict[str, Path], env: dict[str, str]) -> list[list[object]]:
    rows: list[list[object]] = []
    for runtime, python in pythons.items():
        ERR.print(f"contention {runtime}")
        _, answer = run_child(python, ["--child", "contention", runtime], env)
        rows.append(
            [runtime, answer["alone_ms"], answer["beside_busy_ms"], answer["beside_busy_ms"] / answer["alone_ms"]]
        )
    return rows


def _uv() -> str:
    """uv on PATH, else the one `./run` installs."""
    fallback = "${XDG_CACHE_HOME:-$HOME/.cache}/orchestrion/tools/bin/uv"
    found = subprocess.run(["bash", "-c", f"command -v uv || echo {fallback}"], capture_output=True, text=True)
    return found.stdout.strip().splitlines()[0]


def du_bytes(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def wheel_download_bytes(project: Path) -> int:
    """The wheels of the default install for CPython 3.11 on x86-64 Linux, from uv.lock's recorded sizes."""
    exported = subprocess.run(
        [
            _uv(),
            "export",
            "--locked",
            "--no-emit-project",
            "--no-hashes",
            "--extra",
            "local-llm",
            "--format",
            "requirements-txt",
        ],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    )
    wanted = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", exported.stdout, flags=re.M))
    wanted = {name.lower().replace("_", "-"): version for name, version in wanted.items()}
    total = 0
    for package in tomllib.loads((project / "uv.lock").read_text())["package"]:
        if wanted.get(package["name"]) != package.get("version"):
            continue
        wheels = [w for w in package.get("wheels", []) if _fits(w["url"].rsplit("/", 1)[1])]
        if wheels:
            total += max(w.get("size", 0) for w in wheels)
        elif "sdist" in package:
            total += package["sdist"].get("size", 0)  # built here (llama-cpp-python)
    return total


def _fits(filename: str) -> bool:
    tags = filename[:-4].split("-")[-3:]
    python, _abi, platform = tags
    py_ok = python in ("py3", "py2.py3", "cp311") or (python.startswith("cp3") and "abi3" in filename)
    return py_ok and (platform == "any" or ("x86_64" in platform and "linux" in platform and "musl" not in platform))


def measure_install(old_rev: str, new_rev: str) -> list[list[object]]:
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-embedder-install-") as tmp:
        for label, rev in (("before", old_rev), ("after", new_rev)):
            project = Path(tmp) / label
            project.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(project)], input=archive.stdout, check=True)
            ERR.print(f"install ({label}, {rev}): uv sync into a new venv")
            env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(project / ".venv"), "UV_PYTHON_DOWNLOADS": "never"}
            started = time.perf_counter()
            subprocess.run(
                [
                    _uv(),
                    "sync",
                    "--locked",
                    "--extra",
                    "local-llm",
                    "--no-install-package",
                    "llama-cpp-python",
                    "--quiet",
                ],
                cwd=project,
                env=env,
                check=True,
            )
            seconds = time.perf_counter() - started
            venv = du_bytes(project / ".venv")
            rows.append([f"{label} ({rev})", seconds, venv / 1e9, wheel_download_bytes(project) / 1e9])
    before, after = rows
    for row, base in ((before, before), (after, before)):
        row += [float(row[2]) / float(base[2])]
    return rows


API_HEALTHY = re.compile(r"api healthy \((\d+(?:\.\d+)?)s\)")


def measure_up(pythons: dict[str, Path], rounds: int) -> list[list[object]]:
    rows: list[list[object]] = []
    for runtime, python in pythons.items():
        with tempfile.TemporaryDirectory(prefix=f"bench-embedder-up-{runtime}-") as data_dir:
            env = {**os.environ, "ORCHESTRION_DATA_DIR": data_dir, "ORCHESTRION_RAG__EMBEDDING_RUNTIME": runtime}
            env.pop("ORCHESTRION_SERVER__PORT", None)
            for i in range(rounds + 1):
                kind = "fresh" if i == 0 else "warm"
                ERR.print(f"up ({runtime}, {kind} {i}/{rounds})")
                group, total, note = _up_once(python, env)
                rows.append([runtime, kind, group, total, note])
    return rows


def _up_once(python: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """Seconds until `up` prints the API healthy: as it prints it (since the worker and API were started), and
    since `up` was launched; or NaN and why `up` failed (its API start timeout is 60 s)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [str(python), "-m", "orchestrion", "up", "--exit-when-ready", "--no-samples"],
        cwd=ROOT,
        env={**env, "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    group = total = float("nan")
    assert process.stdout is not None
    log = []
    for line in process.stdout:
        log.append(line)
        found = API_HEALTHY.search(line)
        if found and math.isnan(total):
            total, group = time.perf_counter() - started, float(found.group(1))
    if process.wait(timeout=600) != 0 or math.isnan(group):
        reason = next(
            (line.strip() for line in log if line.startswith("error:")), "exit status " + str(process.returncode)
        )
        ERR.print("`orchestrion up` failed:\n" + "".join(log[-15:]))
        return group, total, reason
    return group, total, ""


def _median_of_successes(values: list[float]) -> float:
    done = [v for v in values if not math.isnan(v)]
    return statistics.median(done) if done else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--gpu-venv", type=Path, required=True, help="a venv with the gpu extra (the old runtime)")
    parser.add_argument("--default-venv", type=Path, default=ROOT / ".venv", help="the default install")
    parser.add_argument("--chunks", type=int, default=96, help="full-window chunks per throughput run")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of each timed step")
    parser.add_argument("--old-rev", default="main", help="git revision of the install before")
    parser.add_argument("--new-rev", default="HEAD", help="git revision of the install after")
    parser.add_argument("--only", nargs="*", default=["cold", "throughput", "contention", "install", "up"])
    parser.add_argument("--quick", action="store_true", help="1 round, 32 chunks, no install or up")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.chunks, args.only = 1, 32, [s for s in args.only if s not in ("install", "up")]
    pythons = {"torch": args.gpu_venv / "bin" / "python", "onnx": args.default_venv / "bin" / "python"}
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "orchestrion" / "pycache"
    env = {**os.environ, "PYTHONPYCACHEPREFIX": os.environ.get("PYTHONPYCACHEPREFIX", str(cache))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a warm machine has bytecode: measure imports, not compiling

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    OUT.print(f"bench.embedder · commit {commit.stdout.strip()} · {machine_note()}\n")
    checks: list[tuple[str, float, str, bool]] = []
    if "cold" in args.only:
        rows = measure_cold(pythons, env, args.rounds)
        OUT.print(
            table(
                "Cold process to first embedding (median)",
                ["runtime", "wall s", "CPU s", "wall ratio", "CPU ratio"],
                rows,
            )
        )
        onnx = next(r for r in rows if r[0] == "onnx")
        checks.append(("cold start < 3 s", float(onnx[3]), f"{onnx[1]:.2f} s", float(onnx[1]) < 3.0))
    if "throughput" in args.only:
        rows = measure_throughput(pythons, env, args.chunks, args.rounds)
        OUT.print(
            table(
                f"Chunks/s at 256 tokens, {args.chunks} chunks, median of {args.rounds}",
                ["setting", "chunks/s", "CPU ms/chunk", "rate vs torch", "CPU efficiency vs torch"],
                rows,
            )
        )
        default = rows[1]
        checks.append(("chunks/s >= torch's", float(default[3]), f"{default[1]:.1f}/s", float(default[3]) >= 1.0))
    if "contention" in args.only:
        rows = measure_contention(pythons, env)
        OUT.print(
            table(
                "Six queries in the process, one thread (median ms)",
                ["runtime", "alone", "beside a busy thread", "slowdown"],
                rows,
            )
        )
    if "install" in args.only:
        rows = measure_install(args.old_rev, args.new_rev)
        OUT.print(
            table(
                "Default install (uv sync --locked --extra local-llm, dev group; uv cache warm)",
                ["lock", "sync s", "venv GB", "wheels to download GB", "size ratio"],
                rows,
            )
        )
        checks.append(("venv < 1.5 GB", float(rows[1][4]), f"{rows[1][2]:.2f} GB", float(rows[1][2]) < 1.5))
    if "up" in args.only:
        rows = measure_up(pythons, min(args.rounds, 2))
        OUT.print(
            table(
                "orchestrion up: API healthy after (s)",
                ["runtime", "start", "as up prints it", "since up was launched", "note"],
                rows,
            )
        )
        warm = {r: _median_of_successes([float(row[3]) for row in rows if row[0] == r and row[1] == "warm"])
                for r in pythons}  # fmt: skip
        checks.append(
            (
                "API healthy on a warm up < 10 s",
                warm["onnx"] / warm["torch"],
                f"{warm['onnx']:.1f} s",
                warm["onnx"] < 10.0,
            )
        )
    for name, ratio, detail, met in checks:
        OUT.print(verdict(f"embedder {name}", ratio, name, met, detail))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        kind = sys.argv[2]
        if kind == "cold":
            answer = child_cold(sys.argv[3])
        elif kind == "throughput":
            answer = child_throughput(json.loads(sys.argv[3]), int(sys.argv[4]))
        else:
            answer = child_contention(sys.argv[3])
        print(json.dumps(answer))
    else:
        main()
