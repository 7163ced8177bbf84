"""A served model: its inference process, and the queue from which a dispatcher thread batches the
sentences of waiting requests for it (nmt/service.py puts requests in, answers them when done).

The model lives in a process of its own (spawned), so that torch never waits for the event loop's
GIL (in a thread, next to an asyncio loop busy with loopback round trips, the tiny test model
translated 15-17 batches of 32 sentences a second against 34-38 alone), and
the server process holds no torch at all. A sentence's translation does not depend on the requests
it was batched with (fp32 search is batch-invariant).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from nmt.config import ServeConfig, ServedModel
from nmt.errors import LineError, NmtError

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An answer other than 200: its status, a message for the client, and extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (no process-wide state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "nmt_requests", "HTTP requests answered, by path and status", ["path", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "nmt_request_seconds", "time to answer POST /v1/translate", registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )  # fmt: skip
        self.queue = Gauge("nmt_queue_sentences", "sentences waiting, by model", ["model"], registry=self.registry)
        self.batch_sentences = Histogram(
            "nmt_batch_sentences", "sentences a worker translated together", ["model"], registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        )  # fmt: skip
        self.batch_tokens = Histogram(
            "nmt_batch_tokens", "target subwords of the best translations a worker produced together", ["model"],
            registry=self.registry, buckets=(8, 32, 128, 512, 2048, 8192, 32768),
        )  # fmt: skip
        self.tokens = Counter("nmt_translated_tokens", "target subwords produced", ["model"], registry=self.registry)


@dataclass(eq=False)
class Pending:
    """One request's sentences waiting for, or in, a worker."""

    texts: list[str]
    options: tuple[tuple[str, Any], ...]  # its REQUEST_OPTIONS, sorted: requests alike share a search
    cost: int  # roughly its search rows x source tokens in a batch (words stand for subwords)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


def inference_process(connections: list[Connection], spec: ServedModel, niceness: int) -> None:
    """The process that holds one model: it loads and warms up the model, says so on each of its
    connections, then a thread per connection (the model's decode.streams: batches translated side
    by side, sharing one copy of the model) translates each batch sent there until None comes. A
    process of its own, so that torch never waits for the event loop's GIL (in a thread, a busy loop
    starved the model), and so that the parent holds no torch at all. It runs `niceness` below the
    server, so that a flood of requests cannot keep the server from answering /healthz or refusing
    what it cannot take."""
    os.nice(niceness)
    from nmt.translator import Translator  # torch only here

    try:  # loading divides the threads among the streams
        loaded = Translator.from_checkpoints([Path(path) for path in spec.checkpoints], spec.decode)
        loaded.translate(["Warm up ."])  # first-call allocations and kernel choices
    except NmtError as error:
        for connection in connections:
            connection.send(("failed", str(error)))
        return
    # here the streams are the serving threads: each searches the batches it is sent in one stream
    translator = Translator(
        loaded.model, loaded.src_pipeline, loaded.tgt_pipeline, dataclasses.replace(loaded.cfg, streams=1)
    )
    languages = (translator.src_pipeline.moses.lang, translator.tgt_pipeline.moses.lang)

    def serve(connection: Connection) -> None:
        connection.send(("ready", languages))
        while (job := connection.recv()) is not None:
            options, requests = job
            connection.send(translate_requests(translator.with_options(**dict(options)), requests))

    streams = [threading.Thread(target=serve, args=(connection,)) for connection in connections]
    for stream in streams:
        stream.start()
    for stream in streams:
        stream.join()


def translate_requests(translator: Any, requests: list[list[str]]) -> list[tuple[str, Any]]:
    """Each request's texts translated together with the others': per request ("ok", translations
    as plain data, target subwords) or ("error", message). A request whose sentence is refused (too
    long) gets its error and the others are translated without it."""
    answers: dict[int, tuple[str, Any]] = {}
    left = list(range(len(requests)))
    while left:
        lines = [text for index in left for text in requests[index]]
        try:
            results = translator.translate(lines)
        except LineError as error:
            position = error.index
            for index in left:  # the request holding line `error.index`
                if position < len(requests[index]):
                    answers[index] = ("error", f"text {position}: {error.reason}")
                    left.remove(index)
                    break
                position -= len(requests[index])
            continue
        start = 0
        for index in left:
            mine = results[start : start + len(requests[index])]
            start += len(requests[index])
            plain = [[(t.text, t.score, t.alignment) for t in hyps] for hyps in mine]
            answers[index] = ("ok", (plain, sum(len(hyps[0].tokens) for hyps in mine)))
        left = []
    return [answers[index] for index in range(len(requests))]


class Worker:
    """One model: its inference processes (`serve.processes`, each translating decode.streams batches
    side by side), and the queue from which a dispatcher thread per stream takes the sentences of
    waiting requests to translate them together."""

    def __init__(self, name: str, spec: ServedModel, cfg: ServeConfig, metrics: Metrics) -> None:
        self.name, self.decode, self.cfg, self.metrics = name, spec.decode, cfg, metrics
        self.languages: tuple[str, str] = ("", "")
        self._waiting: collections.deque[Pending] = collections.deque()
        self._sentences = 0  # in _waiting
        self._changed = threading.Condition()
        self._stopping = False
        spawn = multiprocessing.get_context("spawn")
        self._connections, self._processes, self._threads = [], [], []
        for number in range(cfg.processes):
            pipes = [spawn.Pipe() for _ in range(spec.decode.streams)]
            process = spawn.Process(
                target=inference_process,
                args=([child for _, child in pipes], spec, cfg.model_niceness),
                name=f"nmt-model-{name}-{number}",
                daemon=True,
            )
            process.start()
            self._processes.append(process)
            for stream, (connection, _) in enumerate(pipes):
                self._connections.append(connection)
                self._threads.append(
                    threading.Thread(
                        target=self._run, args=(connection,), name=f"nmt-dispatch-{name}-{number}.{stream}", daemon=True
                    )
                )

    def wait_loaded(self) -> None:
        """Block until the model is loaded and warmed up; NmtError if it could not be."""
        for connection in self._connections:
            try:
                status, detail = connection.recv()
            except EOFError:
                raise NmtError(f"model {self.name!r}: its process ended while loading") from None
            if status == "failed":
                raise NmtError(detail)
            self.languages = detail
        for thread in self._threads:
            thread.start()

    def submit(self, texts: list[str], options: dict[str, Any]) -> Pending:
        """Queue a request's texts with its search options, checked as any DecodeConfig (422 if they
        cannot go together, 429 if the queue is full)."""
        try:
            request = dataclasses.replace(self.decode, **options)  # nbest <= beam_size, ...
        except NmtError as error:
            raise ServiceError(422, str(error).removeprefix("config: decode.")) from None
        rows = request.search_rows()  # an MBR model's rows count in full
        pending = Pending(texts, tuple(sorted(options.items())), rows * sum(len(t.split()) + 2 for t in texts))
        with self._changed:
            if self._sentences + len(texts) > self.cfg.max_queue:
                raise ServiceError(
                    429, f"the queue of model {self.name!r} is full ({self.cfg.max_queue} sentences); retry later",
                    {"Retry-After": "1"},
                )  # fmt: skip
            self._waiting.append(pending)
            self._count(len(texts))
            self._changed.notify()
        return pending

    def withdraw(self, pending: Pending) -> None:
        """A request that gave up: its sentences leave the queue if no search has them yet."""
        with self._changed:
            if pending in self._waiting:
                self._waiting.remove(pending)
                self._count(-len(pending.texts))

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join()
        for connection in self._connections:
            with contextlib.suppress(OSError):  # the process may be gone already
                connection.send(None)
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()

    def _count(self, change: int) -> None:
        self._sentences += change
        self.metrics.queue.labels(self.name).set(self._sentences)

    def _take(self) -> list[Pending]:
        """Wait for a request, then up to max_wait_ms for others, and take about one batch's worth."""
        with self._changed:
            while not self._waiting and not self._stopping:
                self._changed.wait()
            deadline = time.monotonic() + self.cfg.max_wait_ms / 1000
            while (left := deadline - time.monotonic()) > 0 and not self._stopping:
                if sum(p.cost for p in self._waiting) >= self.decode.batch_tokens:
                    break
                self._changed.wait(left)
            taken, budget = [], self.decode.batch_tokens
            while self._waiting and (not taken or budget >= self._waiting[0].cost):
                pending = self._waiting.popleft()
                self._count(-len(pending.texts))
                if pending.future.set_running_or_notify_cancel():  # False: its client is gone
                    taken.append(pending)
                    budget -= pending.cost
            return taken

    def _run(self, connection: Connection) -> None:
        while not self._stopping or self._waiting:
            groups: dict[tuple, list[Pending]] = collections.defaultdict(list)
            for pending in self._take():
                groups[pending.options].append(pending)
            for options, group in groups.items():
                self._translate(connection, options, group)

    def _translate(self, connection: Connection, options: tuple, group: list[Pending]) -> None:
        try:
            connection.send((options, [pending.texts for pending in group]))
            answers = connection.recv()
        except (EOFError, OSError) as error:  # the model's process died: answer 500, say why in the log
            log.error("model %s: its process is gone (%s)", self.name, error)
            for pending in group:
                pending.future.set_exception(ServiceError(500, f"model {self.name!r} is not running"))
            return
        sentences = tokens = 0
        for pending, (status, detail) in zip(group, answers):
            if status == "error":
                pending.future.set_exception(ServiceError(422, detail))
                continue
            results, subwords = detail
            pending.future.set_result(results)
            sentences, tokens = sentences + len(results), tokens + subwords
        self.metrics.batch_sentences.labels(self.name).observe(sentences)
        self.metrics.batch_tokens.labels(self.name).observe(tokens)
        self.metrics.tokens.labels(self.name).inc(tokens)
