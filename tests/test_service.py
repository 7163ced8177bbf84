"""nmt-serve: a real server process on a loopback port and a real HTTP client for what a client
sees (translations, order, n-best, batching across requests, floods, draining, the API key); the
app in-process for every limit and error code."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import tiny_config
from fastapi.testclient import TestClient

from nmt import model_worker, serve, service, synthetic
from nmt.config import DecodeConfig, ServeConfig, ServedModel, ServedModels
from nmt.service import create_app
from nmt.translator import Translator

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    data = tiny_config().data
    lines, _ = synthetic.generate_split("test", data.synthetic_train_pairs, data.synthetic_seed)
    return lines[:40]


@pytest.fixture(scope="module")
def reference(trained_checkpoint: Path) -> Translator:
    return Translator.from_checkpoints([trained_checkpoint], DecodeConfig(beam_size=3))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`nmt-serve` in a process of its own, on a free loopback port."""

    def __init__(self, checkpoint: Path, *flags: str) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        command = [sys.executable, "-m", "nmt.serve", "-m", str(checkpoint), "--port", self.url.rsplit(":", 1)[1]]
        # a pipe nobody reads could fill up and stall the server; closed in stop()
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self.process = subprocess.Popen(
            [*command, "--beam-size", "3", *flags],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,  # a process group of its own
        )  # fmt: skip

    def wait_ready(self, headers: dict[str, str] | None = None) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()
            try:
                if httpx.get(f"{self.url}/readyz", headers=headers, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(self.url)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(trained_checkpoint: Path) -> Iterator[Server]:
    running = Server(trained_checkpoint, "--max-queue", "64", "--max-wait-ms", "20")
    running.wait_ready()
    yield running
    running.stop()


def texts_of(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["text"] for item in response.json()["translations"]]


def test_translates_one_text_and_many_in_order(server: Server, sentences: list[str], reference: Translator) -> None:
    expected = [hyps[0].text for hyps in reference.translate(sentences[:5])]
    assert texts_of(httpx.post(f"{server.url}/v1/translate", json={"text": sentences[0]})) == expected[:1]
    many = httpx.post(f"{server.url}/v1/translate", json={"text": [*sentences[:5], ""]})
    assert texts_of(many) == [*expected, ""]
    assert many.json()["model"] == "default"


def test_nbest_and_alignments(server: Server, sentences: list[str], reference: Translator) -> None:
    body = {"text": sentences[:2], "nbest": 3, "alignments": True}
    items = httpx.post(f"{server.url}/v1/translate", json=body).json()["translations"]
    expected = reference.with_options(nbest=3).translate(sentences[:2])
    for item, hyps in zip(items, expected):
        assert [h["text"] for h in item["hypotheses"]] == [h.text for h in hyps]
        assert [h["score"] for h in item["hypotheses"]] == pytest.approx([h.score for h in hyps], abs=1e-4)
        assert item["alignment"] == [[i, j] for j, i in enumerate(hyps[0].alignment)]


def test_concurrent_clients_are_batched_and_get_what_they_would_get_alone(
    server: Server, sentences: list[str], reference: Translator
) -> None:
    """32 clients at once, one sentence each: every answer is that sentence's own translation
    (fp32 search does not depend on the batch), and search steps held several requests' sentences."""
    alone = {line: hyps[0].text for line, hyps in zip(sentences, reference.translate(sentences))}

    async def clients() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            calls = [client.post(f"{server.url}/v1/translate", json={"text": line}) for line in sentences[:32]]
            return await asyncio.gather(*calls)

    for line, response in zip(sentences, asyncio.run(clients())):
        assert texts_of(response) == [alone[line]]
    metrics = httpx.get(f"{server.url}/metrics").text
    sizes = [line for line in metrics.splitlines() if line.startswith("nmt_batch_sentences_bucket")]
    counts = {line.split('le="')[1].split('"')[0]: float(line.split()[-1]) for line in sizes}
    assert counts["8.0"] < counts["+Inf"], "no search step held more than 8 requests' sentences"


def test_models_health_and_metrics(server: Server) -> None:
    (model,) = httpx.get(f"{server.url}/v1/models").json()["models"]
    assert (model["id"], model["source_language"], model["decode"]["beam_size"]) == ("default", "src", 3)
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "alive"}
    metrics = httpx.get(f"{server.url}/metrics").text
    for name in ("nmt_requests_total", "nmt_request_seconds", "nmt_queue_sentences", "nmt_translated_tokens_total"):
        assert name in metrics


def test_a_flood_is_shed_with_429_while_health_stays_quick(trained_checkpoint: Path, sentences: list[str]) -> None:
    flooded = Server(trained_checkpoint, "--max-queue", "4", "--max-wait-ms", "300")
    try:
        flooded.wait_ready()

        async def flood() -> tuple[list[int], float]:
            async with httpx.AsyncClient(timeout=60) as client:
                calls = [client.post(f"{flooded.url}/v1/translate", json={"text": line}) for line in sentences[:20]]
                pending = asyncio.gather(*calls)
                await asyncio.sleep(0.1)
                started = time.monotonic()
                await client.get(f"{flooded.url}/healthz")
                health_seconds = time.monotonic() - started
                return [response.status_code for response in await pending], health_seconds

        statuses, health_seconds = asyncio.run(flood())
        assert set(statuses) == {200, 429} and statuses.count(200) >= 4
        assert health_seconds < 0.5
    finally:
        flooded.stop()


@pytest.mark.parametrize("ctrl_c", [False, True], ids=["sigterm", "sigint-to-the-process-group"])
def test_sigterm_answers_the_requests_in_flight_then_exits_0(
    trained_checkpoint: Path, sentences: list[str], ctrl_c: bool
) -> None:
    """SIGTERM to the server, or Ctrl-C in its terminal: SIGINT to the server and its inference process."""
    draining = Server(trained_checkpoint, "--max-wait-ms", "1500")
    try:
        draining.wait_ready()
        answers: list[httpx.Response] = []
        clients = [
            threading.Thread(
                target=lambda line=line: answers.append(
                    httpx.post(f"{draining.url}/v1/translate", json={"text": line}, timeout=60)
                )
            )
            for line in sentences[:3]
        ]
        for client in clients:
            client.start()
        time.sleep(0.5)  # accepted, waiting for the batch
        if ctrl_c:
            os.killpg(draining.process.pid, signal.SIGINT)
        else:
            draining.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        late = httpx.post(f"{draining.url}/v1/translate", json={"text": sentences[0]}, timeout=10)
        assert late.status_code == 503 and "shutting down" in late.json()["error"]["message"]
        assert httpx.get(f"{draining.url}/readyz").status_code == 503
        for client in clients:
            client.join(timeout=60)
        assert [response.status_code for response in answers] == [200, 200, 200]
        assert draining.process.wait(timeout=60) == 0
    finally:
        draining.stop()


def test_the_api_key_guards_every_endpoint_but_healthz(trained_checkpoint: Path) -> None:
    guarded = Server(trained_checkpoint, "--api-key", "s3cret")
    key = {"Authorization": "Bearer s3cret"}
    try:
        guarded.wait_ready(headers=key)
        assert httpx.get(f"{guarded.url}/healthz").status_code == 200
        for path in ("/readyz", "/metrics", "/v1/models"):
            answer = httpx.get(f"{guarded.url}{path}")
            assert answer.status_code == 401 and "API key" in answer.json()["error"]["message"]
        denied = httpx.post(f"{guarded.url}/v1/translate", json={"text": "x"}, headers={"Authorization": "Bearer no"})
        assert denied.status_code == 401
        assert httpx.post(f"{guarded.url}/v1/translate", json={"text": "x"}, headers=key).status_code == 200
    finally:
        guarded.stop()


def served(checkpoint: Path, decode: DecodeConfig) -> ServedModels:
    return ServedModels({"m": ServedModel([str(checkpoint)], decode)})


def test_a_model_that_cannot_load_makes_the_service_say_so(tmp_path: Path) -> None:
    failures: list[str] = []
    app, _ = create_app(served(tmp_path / "missing.pt", DecodeConfig()), ServeConfig(), on_fatal=failures.append)
    with TestClient(app) as test_client:
        deadline = time.monotonic() + 60
        while not failures and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "missing.pt: checkpoint not found" in test_client.get("/readyz").json()["error"]["message"]
    assert len(failures) == 1


@pytest.fixture(scope="module")
def client(trained_checkpoint: Path) -> Iterator[TestClient]:
    """The app in-process: the same code without a network, for the limits and error codes."""
    cfg = ServeConfig(max_sentences=3, max_chars=50, max_body_bytes=400, max_beam_size=4, max_nbest=2, timeout_s=5)
    app, _ = create_app(served(trained_checkpoint, DecodeConfig(beam_size=2)), cfg)
    with TestClient(app) as test_client:
        deadline = time.monotonic() + 60
        while test_client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield test_client


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not JSON"),
        (b'{"text": "caf\xe9"}', 400, "not UTF-8"),
        (b'{"txt": "a"}', 422, "text"),
        (b'{"text": 3}', 422, "text"),
        (b'{"text": "a", "beam_size": "5"}', 422, "beam_size"),
        (b'{"text": ["a", "b", "c", "d"]}', 413, "max_sentences=3"),
        (b'{"text": "' + b"a" * 60 + b'"}', 413, "max_chars=50"),
        (b'{"text": "' + b"a " * 300 + b'"}', 413, "max_body_bytes=400"),
        (b'{"text": "a", "beam_size": 5}', 422, "max_beam_size=4"),
        (b'{"text": "a", "beam_size": 2, "nbest": 3}', 422, "max_nbest=2"),
        (b'{"text": "a", "beam_size": 1, "nbest": 2}', 422, "nbest must be in [1, decode.beam_size]"),
        (b'{"text": "a", "model": "other"}', 404, "no model 'other'"),
    ],
)
def test_every_bad_request_is_a_json_error(client: TestClient, body: bytes, status: int, message: str) -> None:
    response = client.post("/v1/translate", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]
    assert client.post("/v1/translate", json={"text": "a b"}).status_code == 200  # nobody else is harmed


def test_a_bug_is_a_json_500_that_harms_no_other_request(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(body: object, state: object) -> None:
        raise RuntimeError("a bug")

    with monkeypatch.context() as patch:
        patch.setattr(service, "admit", broken)
        failed = client.post("/v1/translate", json={"text": "a b"})
    assert failed.status_code == 500
    assert failed.json()["error"]["message"] == "internal error; the server log has the details"
    assert client.post("/v1/translate", json={"text": "a b"}).status_code == 200
    assert 'nmt_requests_total{path="/v1/translate",status="500"} 1.0' in client.get("/metrics").text


def test_unknown_paths_and_methods_are_json_errors(client: TestClient) -> None:
    assert client.get("/nowhere").json()["error"]["status"] == 404
    assert client.get("/v1/translate").json()["error"]["status"] == 405


def test_a_sentence_over_max_source_length_fails_only_its_request(trained_checkpoint: Path) -> None:
    decode = DecodeConfig(beam_size=2, max_source_length=8)
    app, _ = create_app(served(trained_checkpoint, decode), ServeConfig(max_wait_ms=200))
    with TestClient(app) as test_client:
        while test_client.get("/readyz").status_code != 200:
            time.sleep(0.05)
        results: dict[str, httpx.Response] = {}
        bodies = {"long": {"text": ["a b", "a b c d e f g h i j k l"]}, "short": {"text": "a b"}}
        threads = [
            threading.Thread(target=lambda k=k, b=b: results.__setitem__(k, test_client.post("/v1/translate", json=b)))
            for k, b in bodies.items()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results["long"].status_code == 422 and "text 1:" in results["long"].json()["error"]["message"]
    assert results["short"].status_code == 200


def test_readiness_waits_for_loading_and_a_late_request_times_out(trained_checkpoint: Path) -> None:
    app, state = create_app(
        served(trained_checkpoint, DecodeConfig(beam_size=2)), ServeConfig(timeout_s=0.05, max_wait_ms=500)
    )
    with TestClient(app) as test_client:
        # the model's process is still importing torch and loading
        assert "loading" in test_client.get("/readyz").json()["error"]["message"]
        assert test_client.post("/v1/translate", json={"text": "a"}).status_code == 503
        while test_client.get("/readyz").status_code != 200:
            time.sleep(0.05)
        late = test_client.post("/v1/translate", json={"text": "a b"})
        assert late.status_code == 504 and "timeout_s=0.05" in late.json()["error"]["message"]
        assert state.workers["m"]._sentences == 0  # its sentence left the queue
        metrics = test_client.get("/metrics").text
    assert 'nmt_requests_total{path="/v1/translate",status="504"} 1.0' in metrics


def test_a_request_that_times_out_in_a_search_leaves_it(trained_checkpoint: Path) -> None:
    """Its client has its 504; the model stops searching its sentences instead of finishing them
    (nmt_translated_tokens counts none of them) and the stream takes new requests."""
    app, state = create_app(
        served(trained_checkpoint, DecodeConfig(beam_size=4)), ServeConfig(timeout_s=0.05, processes=1)
    )
    with TestClient(app) as test_client:
        while test_client.get("/readyz").status_code != 200:
            time.sleep(0.05)
        long = {"text": [" ".join(["a b c"] * 20)] * 32, "min_length": 120}  # 120 steps at least
        late = test_client.post("/v1/translate", json=long)
        assert late.status_code == 504
        (link,) = state.workers["m"]._links
        deadline = time.monotonic() + 30
        while link.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not link.in_flight and link.cost == 0
        metrics = test_client.get("/metrics").text
        steps = re.search(r'^nmt_batch_sentences_count\{model="m"\} (\S+)$', metrics, re.MULTILINE)
        assert steps and float(steps[1]) > 0, "it was searched"
        assert "nmt_translated_tokens_total{" not in metrics, "it was searched to the end"
        assert state.workers["m"].submit(["a b"], {}).future.result(timeout=30)  # the stream goes on


@pytest.mark.parametrize(("processes", "streams"), [(2, 1), (1, 2)])
def test_several_processes_or_streams_per_model_share_its_queue_run_nicer_and_stop(
    trained_checkpoint: Path, sentences: list[str], processes: int, streams: int
) -> None:
    app, state = create_app(
        served(trained_checkpoint, DecodeConfig(beam_size=2, streams=streams)),
        ServeConfig(processes=processes, model_niceness=3),
    )
    with TestClient(app) as test_client:
        while test_client.get("/readyz").status_code != 200:
            time.sleep(0.05)
        answers: dict[int, httpx.Response] = {}
        threads = [
            threading.Thread(
                target=lambda i=i: answers.__setitem__(
                    i, test_client.post("/v1/translate", json={"text": sentences[i]})
                )
            )
            for i in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(state.workers["m"]._processes) == processes  # each holding one copy of the model
        assert len(state.workers["m"]._links) == processes * streams  # a sender and a receiver per stream
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        for process in state.workers["m"]._processes:  # the model yields the CPU to the HTTP side
            assert os.getpriority(os.PRIO_PROCESS, process.pid) == min(ours + 3, 19)
    # leaving the block shut the service down: every sender and receiver thread and process has stopped
    assert all(not process.is_alive() for process in state.workers["m"]._processes)
    alone = Translator.from_checkpoints([trained_checkpoint], DecodeConfig(beam_size=2)).translate(sentences[:8])
    assert [texts_of(answers[i]) for i in range(8)] == [[hyps[0].text] for hyps in alone]


def test_a_waiting_request_goes_to_the_stream_with_the_least_in_flight() -> None:
    worker = model_worker.Worker.__new__(model_worker.Worker)  # its choice alone: no processes
    worker.decode = DecodeConfig(batch_tokens=100)
    idle, busy, full, dead = (model_worker.Link(connection=None, cost=cost) for cost in (0, 30, 90, 0))
    dead.alive = False
    worker._links = [idle, busy, full, dead]
    worker._waiting = collections.deque([model_worker.Pending(["A dog ."], (), cost=20)])
    assert [worker._fits(link) for link in worker._links] == [True, False, False, False]
    idle.cost = 40  # now busy has the least: it takes the next
    assert [worker._fits(link) for link in worker._links] == [False, True, False, False]
    busy.cost = idle.cost = 90  # equally loaded, but the request would pass batch_tokens
    assert not any(worker._fits(link) for link in worker._links)
    worker._waiting.clear()
    busy.cost = 0
    assert not any(worker._fits(link) for link in worker._links)  # nothing waits


@pytest.mark.parametrize(
    ("cores", "processes", "models", "decode", "expected"),
    [
        (4, 0, 1, DecodeConfig(), (4, 1)),  # one single-threaded process per core
        (4, 0, 2, DecodeConfig(), (2, 1)),  # the cores divided among the models
        (20, 0, 1, DecodeConfig(), (8, 2)),  # at most 8; the cores divided among them
        (1, 0, 3, DecodeConfig(), (1, 1)),  # always one
        (4, 1, 1, DecodeConfig(), (1, 4)),  # as many as asked for, with every core
        (4, 2, 1, DecodeConfig(threads=3), (2, 3)),  # the threads asked for
        (4, 0, 1, DecodeConfig(device="cuda"), (1, 0)),  # one per GPU model, its threads untouched
        (4, 3, 1, DecodeConfig(device="cuda"), (3, 0)),
    ],
)
def test_inference_layout_gives_a_cpu_model_single_threaded_processes_unless_told(
    monkeypatch: pytest.MonkeyPatch, cores: int, processes: int, models: int, decode: DecodeConfig, expected: tuple
) -> None:
    monkeypatch.setattr(model_worker, "usable_cpus", lambda: cores)
    count, spec = model_worker.inference_layout(ServedModel(["a.pt"], decode), processes, models)
    assert (count, spec.decode.threads) == expected
    assert dataclasses.replace(spec.decode, threads=decode.threads) == decode  # nothing else changes


def test_nmt_serve_without_the_service_packages_says_how_to_install_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now raises ImportError
    with pytest.raises(SystemExit) as exited:
        serve.main(["-m", "unused.pt"])
    assert exited.value.code == 1
    expected = 'error: nmt-serve needs uvicorn, which is not installed: pip install -e ".[serve]" in a checkout\n'
    assert capsys.readouterr().err == expected


def test_a_model_process_that_dies_leaves_the_others_serving_then_500(
    trained_checkpoint: Path, sentences: list[str]
) -> None:
    """One of two inference processes killed: the other answers every request (none waits for the
    dead one until it times out); both killed: a JSON 500 at once."""
    app, state = create_app(
        served(trained_checkpoint, DecodeConfig(beam_size=2)), ServeConfig(processes=2, timeout_s=10)
    )
    with TestClient(app) as test_client:
        while test_client.get("/readyz").status_code != 200:
            time.sleep(0.05)
        worker = state.workers["m"]
        for number, process in enumerate(worker._processes):
            process.kill()
            process.join()
            deadline = time.monotonic() + 10
            while worker._links[number].alive and time.monotonic() < deadline:  # its receiver reads EOF
                time.sleep(0.01)
            if number == 0:
                for line in sentences[:6]:
                    response = test_client.post("/v1/translate", json={"text": line})
                    assert response.status_code == 200, response.text
        response = test_client.post("/v1/translate", json={"text": sentences[0]})
    assert response.status_code == 500 and "not running" in response.json()["error"]["message"]
