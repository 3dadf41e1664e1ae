"""Benchmark: what a person waits for an answer from the champion, before and after serving.

On a project whose registry holds a champion, over the first real test questions:
- `ask, cold cache`: `ragloop ask` in a new process with an empty component cache, i.e. what
  every call paid before the cache (download the bundle and its 540 MB generator, check,
  load, answer);
- `ask, warm cache`: the same command once the cache holds the versions;
- `ask, serve running`: the same command while `ragloop serve` serves the alias, which answers;
- `serve, sequential`: one client, one question at a time, over HTTP to `ragloop serve`;
- `serve, concurrent`: M clients at once, each asking its share of the questions.
Per row: latency p50 / p95 / max, errors, and the answers' token F1 against the gold answers
beside it (so a faster row that answered worse shows it). The cache and the server's feedback
database are temporary (a params copy points at them), so the project's own stay as they are.

    python bench/bench_serve.py [--params params.yaml] [--asks 3] [--questions 40] [--clients 4]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from tasks.lib.core.config import Params, load_params
from tasks.lib.core.records import read_qa_splits
from tasks.lib.generation.metrics import token_f1

Timed = tuple[float, str | None]  # seconds, and the answer (None: an error)


def scratch_params(params_file: Path, scratch: Path, port: int) -> Path:
    """A params copy beside the original (so its relative paths resolve the same) with the
    component cache, the feedback database and the server's port of this run."""
    raw = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    raw["paths"]["component_cache"] = str(scratch / "components")
    raw["feedback"]["database"] = f"sqlite:///{scratch / 'feedback.db'}"
    raw["serve"].update(port=port, poll_seconds=0)
    copy = params_file.parent / f".bench-serve.{os.getpid()}.params.yaml"
    copy.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return copy


def ragloop(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("ragloop")), *args]


def ask_once(params_file: Path, question: str) -> Timed:
    started = time.perf_counter()
    done = subprocess.run(
        ragloop("ask", question, "--params", str(params_file)), capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        print(f"  ask failed: {done.stderr.strip().splitlines()[-1:]}")
        return elapsed, None
    return elapsed, done.stdout.splitlines()[0] if done.stdout else ""


def http_ask(http: httpx.Client, url: str, question: str) -> Timed:
    started = time.perf_counter()
    try:
        response = http.post(f"{url}/ask", json={"question": question}, timeout=120)
    except httpx.HTTPError as err:
        print(f"  /ask failed: {err}")
        return time.perf_counter() - started, None
    elapsed = time.perf_counter() - started
    return elapsed, response.json()["answer"] if response.status_code == 200 else None


def wait_healthy(url: str, server: subprocess.Popen, timeout: float = 600) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if server.poll() is not None:
            raise SystemExit(f"error: ragloop serve exited with {server.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"error: ragloop serve did not answer /health within {timeout:.0f} s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def row(name: str, timed: list[Timed], golds: list[tuple[str, ...]]) -> str:
    seconds = [s for s, _ in timed]
    errors = sum(answer is None for _, answer in timed)
    f1 = statistics.mean(token_f1(a or "", g) for (_, a), g in zip(timed, golds, strict=True))
    return (
        f"| {name:<28} | {len(timed):>3} | {percentile(seconds, 0.5):>7.2f} | "
        f"{percentile(seconds, 0.95):>7.2f} | {max(seconds):>7.2f} | {errors:>6} | {f1:>7.3f} |"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--asks", type=int, default=3, help="`ragloop ask` calls per row")
    parser.add_argument("--questions", type=int, default=40, help="questions for the server")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    args = parser.parse_args()
    params: Params = load_params(args.params)
    test = read_qa_splits(params.paths.retrieval_qa_dir)["test"][: max(args.asks, args.questions)]
    questions = [record.question for record in test]
    golds = [tuple(record.answers) for record in test]
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ragloop-bench-serve.") as tmp:
        scratch = scratch_params(args.params.resolve(), Path(tmp), port)
        try:
            rows = measure(scratch, questions, golds, args, f"http://127.0.0.1:{port}")
        finally:
            scratch.unlink()
    print(f"\nbench_serve: {os.cpu_count()} CPUs; seconds per question, as a client sees it")
    print("| path                         |   n |     p50 |     p95 |     max | errors | mean F1 |")
    print("|------------------------------|-----|---------|---------|---------|--------|---------|")
    for line in rows:
        print(line)


def measure(
    params_file: Path,
    questions: list[str],
    golds: list[tuple[str, ...]],
    args: argparse.Namespace,
    url: str,
) -> list[str]:
    asked, asked_golds = questions[: args.asks], golds[: args.asks]
    cache = Path(load_params(params_file).paths.component_cache)
    cold: list[Timed] = []
    for question in asked:
        shutil.rmtree(cache, ignore_errors=True)
        cold.append(ask_once(params_file, question))
        print(f"ask, cold cache: {cold[-1][0]:.2f} s")
    warm = [ask_once(params_file, question) for question in asked]
    print(f"ask, warm cache: {', '.join(f'{s:.2f}' for s, _ in warm)} s")
    served = questions[: args.questions]
    served_golds = golds[: args.questions]
    server = subprocess.Popen(
        ragloop("serve", "--params", str(params_file)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        started = wait_healthy(url, server)
        print(f"serve: healthy {started:.1f} s after start (warm cache)")
        with httpx.Client() as http:
            http_ask(http, url, served[0])  # the first request pays for lazy initialisation
            sequential = [http_ask(http, url, question) for question in served]
        print("serve, sequential: done")
        via_server = [ask_once(params_file, question) for question in asked]
        print(f"ask, serve running: {', '.join(f'{s:.2f}' for s, _ in via_server)} s")
        with (
            httpx.Client(limits=httpx.Limits(max_connections=args.clients)) as http,
            concurrent.futures.ThreadPoolExecutor(args.clients) as pool,
        ):
            concurrent_ = list(pool.map(lambda q: http_ask(http, url, q), served))
    finally:
        server.terminate()
        server.wait(timeout=60)
    return [
        row("ask, cold cache (before)", cold, asked_golds),
        row("ask, warm cache", warm, asked_golds),
        row("ask, serve running", via_server, asked_golds),
        row("serve, sequential", sequential, served_golds),
        row(f"serve, {args.clients} concurrent clients", concurrent_, served_golds),
    ]


if __name__ == "__main__":
    main()
