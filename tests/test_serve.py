"""python -m deniro_rt serve as a real process on 127.0.0.1, talked to over HTTP.

Answers are compared with deniro_rt.fill at the precision the server reports in /health. Every
graph is batch-invariant (the int8 one has fixed, calibrated activation scales), so a text batched
with strangers gets the same tokens as alone, scores within 1e-6 (fp32) or 1e-4 (int8).
"""
from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import deniro_rt  # noqa: E402
from deniro_rt.data import mask_one_word, review_sentences  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = '{"inputs": "This is a great [MASK]!", "parameters": {"top_k": 5}}'
LONG_TEXT = "word " * 600 + "[MASK]"  # 3,006 characters, 602 tokens: over the model's 512
MAIN_ARGS = ("--max-wait-ms", "100", "--max-texts-per-request", "8", "--max-text-chars", "5000",
             "--max-body-bytes", "65536")


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path
    precision: str

    def post(self, body, client=None, path: str = "/"):
        content = body if isinstance(body, (bytes, Iterator)) else json.dumps(body).encode()
        return (client or httpx).post(self.url + path, content=content, timeout=60,
                                      headers={"content-type": "application/json"})

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10).text

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(log: Path, *args: str) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "deniro_rt", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            health = httpx.get(url + "/health", timeout=2)
            if health.status_code == 200:
                return Server(proc, url, log, health.json()["precision"])
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"server not healthy after 60 s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("serve") / "main.log", *MAIN_ARGS)
    yield srv
    assert srv.stop() == 0, srv.log.read_text()


@pytest.fixture(scope="module")
def sentences(imdb_texts) -> list[str]:
    """Eight real IMDB test sentences, one word masked in each."""
    rng, found = np.random.default_rng(0), []
    for review in imdb_texts["test"]:
        for sentence in review_sentences(review)[:1]:
            masked = mask_one_word(sentence, rng)
            if masked and 20 <= len(masked[0]) <= 300:
                found.append(masked[0])
        if len(found) == 8:
            return found
    pytest.fail("too few IMDB sentences")


def expected(precision: str, texts, **params):
    """deniro_rt.fill's answer as it travels over JSON (tuples become lists)."""
    return json.loads(json.dumps(deniro_rt.fill(texts, precision=precision, device="cpu", **params)))


def assert_close(got, want, tol: float = 1e-6, where: str = "answer") -> None:
    """Same structure, tokens and strings; scores within tol."""
    assert type(got) is type(want), f"{where}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, list):
        assert len(got) == len(want), f"{where}: {len(got)} items, expected {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, tol, f"{where}[{i}]")
    elif isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            if key == "score":
                assert abs(got[key] - want[key]) <= tol, f"{where}.score {got[key]} vs {want[key]}"
            else:
                assert got[key] == want[key], f"{where}.{key}: {got[key]!r} != {want[key]!r}"
    else:
        assert got == want, where


def assert_batched_close(got: list[dict], want: list[dict], precision: str) -> None:
    """A text that shared a batch: identical tokens and sequences, scores within the precision's bound."""
    assert_close(got, want, tol=1e-4 if precision == "int8" else 1e-6)


def batch_calls(metrics: str) -> tuple[int, int]:
    """(fill calls, fill calls of one text) from the batch-size histogram."""
    total = int(re.search(r"^deniro_batch_size_count (\d+)$", metrics, re.M).group(1))
    ones = int(re.search(r'^deniro_batch_size_bucket\{le="1"\} (\d+)$', metrics, re.M).group(1))
    return total, ones


def post_together(server: Server, bodies: list) -> list:
    """POST each body from its own thread and connection, released at once by a barrier."""
    barrier = threading.Barrier(len(bodies))

    def send(body):
        with httpx.Client() as client:
            client.get(server.url + "/health")  # connect before the barrier
            barrier.wait()
            return server.post(body, client)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(send, bodies))


# --------------------------------------------------------------------------- answers
def test_same_answers_as_fill(server, sentences):
    for text in sentences[:4] + ["This is a great [MASK]!"]:  # one string, one mask: a flat list
        answer = server.post({"inputs": text})
        assert answer.status_code == 200, answer.text
        assert isinstance(answer.json()[0], dict)
        assert_close(answer.json(), expected(server.precision, text))
    answer = server.post({"inputs": sentences, "parameters": {"top_k": 3}})  # a list: one entry per text
    assert len(answer.json()) == len(sentences)
    assert_close(answer.json(), expected(server.precision, sentences, top_k=3))


def test_shapes_targets_joint(server):
    multi = "the [MASK] was [MASK] ."  # several masks: a list per mask
    answer = server.post({"inputs": multi, "parameters": {"top_k": 2}}, path="/fill").json()
    assert len(answer) == 2 and len(answer[0]) == 2 and isinstance(answer[0][0], dict)
    assert_close(answer, expected(server.precision, multi, top_k=2))
    texts = ["This is a great [MASK]!", multi]
    assert_close(server.post({"inputs": texts}).json(), expected(server.precision, texts))
    params = {"targets": ["movie", "masterpiece", "film"], "top_k": 2}
    answer = server.post({"inputs": "This is a great [MASK]!", "parameters": params}).json()
    assert len(answer) == 2 and {p["token_str"] for p in answer} <= {"movie", "masterpiece", "film"}
    assert_close(answer, expected(server.precision, "This is a great [MASK]!", **params))
    joint = server.post({"inputs": [multi], "parameters": {"joint": True}}).json()
    assert_close(joint, expected(server.precision, [multi], joint=True))
    assert server.post({"inputs": []}).json() == []


def test_truncation_parameter(server):
    answer = server.post({"inputs": LONG_TEXT, "parameters": {"truncation": True, "top_k": 2}})
    assert answer.status_code == 200, answer.text
    assert_close(answer.json(), expected(server.precision, LONG_TEXT, truncation=True, top_k=2))


# --------------------------------------------------------------------------- errors
def long_text_message(precision: str) -> str:
    with pytest.raises(deniro_rt.DeniroError) as caught:
        deniro_rt.fill([LONG_TEXT], precision=precision, device="cpu")
    return str(caught.value)


BAD_BODIES = [
    (b'{"inputs": "x"', 400, "body is not valid JSON (Expecting ',' delimiter: line 1 column 15 (char 14)); "
                            f"send e.g. {EXAMPLE}"),
    (b"[1]", 422, f"body must be a JSON object, got list; send e.g. {EXAMPLE}"),
    ({"text": "a [MASK]"}, 422, "unknown field(s) text; the body takes inputs, parameters, options"),
    ({"parameters": {}}, 422, f'body has no "inputs"; send e.g. {EXAMPLE}'),
    ({"inputs": 3}, 422, '"inputs": texts must be a string or a list of strings, got int'),
    ({"inputs": ["a [MASK]", " "]}, 422, '"inputs": text 1 is empty; pass a sentence with [MASK] in it'),
    ({"inputs": "[mask] x"}, 422, "text 0 has no [MASK]: '[mask] x' (the mask token is case-sensitive: "
                                  "write [MASK])"),
    ({"inputs": "a [MASK]", "parameters": {"top_k": 0}}, 422, "top_k must be a positive integer, got 0"),
    ({"inputs": "a [MASK]", "parameters": {"top_k": 101}}, 422,
     "top_k is 101; this server returns at most 100 (--max-top-k)"),
    ({"inputs": "a [MASK]", "parameters": {"topk": 3}}, 422,
     "unknown parameter(s) topk; allowed: top_k, targets, joint, truncation"),
    ({"inputs": "a [MASK]", "parameters": {"joint": "yes"}}, 422, "joint must be true or false, got 'yes'"),
    ({"inputs": "a [MASK]", "parameters": {"targets": []}}, 422,
     "targets must be a non-empty list of non-empty strings, got []"),
    ({"inputs": ["a [MASK]"] * 9}, 413, '"inputs" has 9 texts; this server takes at most 8 per request '
                                         "(--max-texts-per-request); split the list"),
    ({"inputs": ["a [MASK]", "a" * 5001]}, 413,
     "text 1 is 5001 characters; this server takes at most 5000 (--max-text-chars)"),
    (b" " * 70000, 413, "body is 70000 bytes; this server takes at most 65536 (--max-body-bytes)"),
    (iter([b" " * 40000] * 2), 413,  # chunked, no Content-Length: cut off while streaming
     "body is more than 65536 bytes; this server takes at most 65536 (--max-body-bytes)"),
]


def test_bad_bodies(server):
    for body, status, message in BAD_BODIES:
        answer = server.post(body)
        assert (answer.status_code, answer.json()) == (status, {"error": message}), message
    answer = server.post({"inputs": LONG_TEXT})  # only the tokenizer sees this one: fails in the batch
    assert (answer.status_code, answer.json()["error"]) == (422, long_text_message(server.precision))
    assert httpx.get(server.url + "/fill").status_code == 405


def test_bad_text_fails_only_its_request(server, sentences):
    before = batch_calls(server.metrics())[0]
    bodies = [{"inputs": s} for s in sentences[:5]] + [{"inputs": ["This is a [MASK] film.", LONG_TEXT]}]
    answers = post_together(server, bodies)
    assert answers[-1].status_code == 422
    assert answers[-1].json()["error"] == long_text_message(server.precision).replace("text 0", "text 1")
    for body, answer in zip(bodies[:-1], answers):
        assert answer.status_code == 200, answer.text
        assert_batched_close(answer.json(), expected(server.precision, body["inputs"]), server.precision)
    calls = batch_calls(server.metrics())[0] - before
    assert calls > len(bodies), "the bad text never shared a batch: the retry path was not exercised"


# --------------------------------------------------------------------------- batching
def test_concurrent_clients_get_their_own_answers(server):
    before = batch_calls(server.metrics())
    texts = [f"review {i} says the film was [MASK] ." for i in range(16)]
    bodies = [{"inputs": t, "parameters": {"top_k": 3 + i % 2}} for i, t in enumerate(texts)]
    for _ in range(2):
        answers = post_together(server, bodies)
        for i, (body, answer) in enumerate(zip(bodies, answers)):
            assert answer.status_code == 200, answer.text
            got = answer.json()
            assert len(got) == 3 + i % 2  # its own top_k: requests with other parameters are not merged
            assert all(p["sequence"].startswith(f"review {i} says") for p in got)
            want = expected(server.precision, body["inputs"], top_k=body["parameters"]["top_k"])
            assert_batched_close(got, want, server.precision)
    calls, ones = (a - b for a, b in zip(batch_calls(server.metrics()), before))
    assert calls < 2 * len(bodies) and calls > ones, "no batch held more than one text"


def test_health_metrics_docs(server):
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["model"].endswith("default")
    metrics = server.metrics()
    for name in ("deniro_requests_total{status=\"200\"}", "deniro_queue_wait_seconds_bucket",
                 "deniro_request_latency_seconds_count", "deniro_batch_size_bucket", "deniro_queue_texts 0"):
        assert name in metrics
    schema = httpx.get(server.url + "/openapi.json").json()
    assert schema["openapi"].startswith("3.") and {"/", "/fill", "/health", "/metrics"} <= set(schema["paths"])
    docs = httpx.get(server.url + "/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text


# --------------------------------------------------------------------------- overload and shutdown
def test_overload_gets_503_with_retry_after(tmp_path):
    srv = start_server(tmp_path / "overload.log", "--max-queue", "4", "--max-wait-ms", "500")
    try:
        answers = post_together(srv, [{"inputs": f"film {i} was [MASK] ."} for i in range(12)])
        codes = [a.status_code for a in answers]
        assert set(codes) == {200, 503} and codes.count(200) >= 4, codes
        for answer in answers:
            if answer.status_code == 503:
                assert answer.headers["retry-after"] == "1"
                assert re.fullmatch(r"the queue is full \(\d texts waiting, at most 4\); retry later",
                                    answer.json()["error"])
        assert f'deniro_requests_total{{status="503"}} {codes.count(503)}' in srv.metrics()
    finally:
        assert srv.stop() == 0, srv.log.read_text()


def test_sigterm_answers_requests_in_flight_and_exits_0(tmp_path):
    srv = start_server(tmp_path / "sigterm.log", "--max-wait-ms", "1500")
    bodies = [{"inputs": f"the {w} was [MASK] ."} for w in ("plot", "cast", "ending", "music", "story", "film")]
    with ThreadPoolExecutor(len(bodies)) as pool:
        futures = [pool.submit(srv.post, body) for body in bodies]
        deadline = time.monotonic() + 10
        while httpx.get(srv.url + "/health").json()["queued_texts"] < len(bodies):
            assert time.monotonic() < deadline, "the requests never reached the queue"
            time.sleep(0.02)
        srv.proc.send_signal(signal.SIGTERM)
        answers = [f.result(timeout=60) for f in futures]
    assert srv.proc.wait(timeout=60) == 0, srv.log.read_text()
    for body, answer in zip(bodies, answers):
        assert answer.status_code == 200, answer.text
        assert_batched_close(answer.json(), expected(srv.precision, body["inputs"]), srv.precision)
    with pytest.raises(httpx.TransportError):
        httpx.get(srv.url + "/health", timeout=2)


# --------------------------------------------------------------------------- without the extra
def test_runtime_imports_without_the_serve_extra():
    code = ("import sys; import deniro_rt, deniro_rt.serve, deniro_rt.__main__; "
            "assert not {'starlette', 'uvicorn'} & set(sys.modules), 'serve extra imported eagerly'; "
            "sys.modules['uvicorn'] = None; "  # as if the extra were not installed
            "from deniro_rt.__main__ import run; sys.exit(run(['serve', '--port', '8999']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        'error: the HTTP server needs the serve extra (uvicorn is missing): pip install "deniro[serve]"')


# --------------------------------------------------------------------------- bench load harness
def test_load_harness_quick(tmp_path):
    from bench.load import LoadConfig, main

    cfg = LoadConfig(servers="batched,unbatched", clients="1,4", rounds=1, requests=30, seconds=10, warmup=4,
                     sentences=20, length=32, out=str(tmp_path))
    assert main(cfg) == 0
    report = json.loads((tmp_path / "load.json").read_text())
    assert [(r["server"], r["clients"]) for r in report["rows"]] == [
        ("batched", 1), ("batched", 4), ("unbatched", 1), ("unbatched", 4)]
    for row in report["rows"]:
        assert (row["requests"], row["ok"], row["failed"], row["rejected_503"]) == (30, 30, 0, 0), row
        assert row["p50_ms"] <= row["p99_ms"] and row["sentences_per_s"] > 0
    assert all(r["mean_batch"] == 1.0 for r in report["rows"] if r["server"] == "unbatched")
    assert report["ratios"][0]["clients"] == 1 and "vs_unbatched" in report["ratios"][0]
    assert (tmp_path / "load.png").stat().st_size > 10_000 and "| batched | 4 |" in (tmp_path / "load.md").read_text()


def test_pipeline_backend_answers_like_the_pipeline(tmp_path):
    """The hf-pipeline adapter of bench/load.py: one result per text, also for a list of one."""
    pytest.importorskip("transformers")
    from transformers import pipeline

    from bench.load import PipelineFill, random_torch_model
    from deniro_rt.models import DEFAULT_MODEL_DIR

    folder = random_torch_model(DEFAULT_MODEL_DIR, tmp_path)
    backend, reference = PipelineFill(str(folder)), pipeline("fill-mask", model=str(folder), device="cpu")
    texts = ["This is a great [MASK]!", "the [MASK] was long .", "a [MASK] film"]
    assert backend.fill(texts[:1], top_k=3) == [reference(texts[0], top_k=3)]
    assert_close(backend.fill(texts, top_k=2), [reference(t, top_k=2) for t in texts])  # padded: ~1e-10
    with pytest.raises(deniro_rt.DeniroError, match="joint is not supported"):
        backend.fill(texts, joint=True)


# --------------------------------------------------------------------------- the app in-process
class RecordingFill:
    """A fake backend: answers each text with its own text, records every fill call."""

    mask_token = "[MASK]"

    def __init__(self):
        self.calls: list[tuple[list[str], int]] = []

    def fill(self, texts, top_k=5, targets=None, joint=False, truncation=False, batch_size=64):
        self.calls.append((list(texts), top_k))
        return [[{"score": 1.0, "token": i, "token_str": t, "sequence": t} for i in range(top_k)] for t in texts]


def test_batches_group_by_parameters_without_lifespan():
    """No lifespan events (httpx's ASGI transport sends none): the first request starts the batcher.
    Four concurrent requests, two parameter sets: one batch, one fill call per parameter set."""
    from deniro_rt.serve import ServeConfig, create_app

    backend = RecordingFill()
    app = create_app(ServeConfig(max_wait_ms=200), fill_mask=backend)
    bodies = [{"inputs": f"text {i} [MASK]", "parameters": {"top_k": 1 + i % 2}} for i in range(4)]

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            assert (await client.get("/health")).status_code == 503  # not loaded yet
            answers = await asyncio.gather(*(client.post("/", json=b) for b in bodies))
            return answers, (await client.get("/health")).json()

    answers, health = asyncio.run(scenario())
    for i, answer in enumerate(answers):
        assert answer.json() == [{"score": 1.0, "token": k, "token_str": f"text {i} [MASK]",
                                  "sequence": f"text {i} [MASK]"} for k in range(1 + i % 2)]
    assert sorted(backend.calls) == [(["text 0 [MASK]", "text 2 [MASK]"], 1), (["text 1 [MASK]", "text 3 [MASK]"], 2)]
    assert health["status"] == "ok" and health["queued_texts"] == 0
