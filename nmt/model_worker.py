"""A served model on the server's side: the queue of its requests, and the threads that feed its
inference processes (nmt/inference_process.py) and answer the requests they are done with.

The server sends a request to the process stream with the least in flight as soon as it has room
for it within decode.batch_tokens; there its sentences join the running beam search at its next step.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
import multiprocessing
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from nmt.config import MAX_AUTO_PROCESSES, DecodeOptions, ServeConfig, ServedModel, usable_cpus
from nmt.errors import NmtError
from nmt.inference_process import Cancel, inference_process

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
            "nmt_batch_sentences", "sentences searched together in a search step", ["model"], registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        )  # fmt: skip
        self.batch_tokens = Histogram(
            "nmt_batch_tokens", "source subwords of the sentences searched together in a search step", ["model"],
            registry=self.registry, buckets=(8, 32, 128, 512, 2048, 8192, 32768),
        )  # fmt: skip
        self.tokens = Counter("nmt_translated_tokens", "target subwords produced", ["model"], registry=self.registry)


@dataclass(eq=False)
class Pending:
    """One request's sentences waiting for, or in, a worker."""

    texts: list[str]
    options: DecodeOptions  # its REQUEST_OPTIONS
    cost: int  # roughly its search rows x source tokens in a batch (words stand for subwords)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


def inference_layout(spec: ServedModel, processes: int, models: int) -> tuple[int, ServedModel]:
    """How many inference processes a model of `models` gets (`ServeConfig.processes`, 0 = automatic)
    and the settings each loads with. On a CPU, processes of one torch thread each: on 2 cores two
    such processes served more sentences/s than one process of two threads (medians of three
    interleaved rounds in two sittings, 2026-12-03: +13% and +19% at 32 clients, +22% and +26% at
    64), whose threads wait for each other at every operation while the HTTP side takes a core for
    a moment (a competing process busy 25% of one core slowed it by 19-27%)."""
    if spec.decode.device != "cpu":
        return processes or 1, spec
    cores = usable_cpus()
    processes = processes or min(max(1, cores // models), MAX_AUTO_PROCESSES)
    if not spec.decode.threads:
        spec = dataclasses.replace(
            spec, decode=dataclasses.replace(spec.decode, threads=max(1, cores // (processes * models)))
        )
    return processes, spec


@dataclass(eq=False)
class Link:
    """One connection to an inference process (one of its streams) and the requests it is translating."""

    connection: Connection
    in_flight: dict[int, Pending] = field(default_factory=dict)
    cost: int = 0  # of the requests in flight
    cancelled: list[int] = field(default_factory=list)  # keys of requests in flight to cancel
    alive: bool = True


class Worker:
    """One model: its inference processes (`serve.processes`, each running decode.streams searches
    side by side), and the queue of requests waiting for them. A sender thread per stream sends it
    the requests that fit (`_take`), a receiver thread answers them as they are done."""

    def __init__(self, name: str, spec: ServedModel, cfg: ServeConfig, metrics: Metrics, models: int) -> None:
        """The model `name` of `models` served, its inference processes started (`inference_layout`)."""
        self.name, self.decode, self.cfg, self.metrics = name, spec.decode, cfg, metrics
        self.languages: tuple[str, str] = ("", "")
        self._waiting: collections.deque[Pending] = collections.deque()
        self._sentences = 0  # in _waiting
        self._changed = threading.Condition()
        self._stopping = False
        self._keys = itertools.count()
        spawn = multiprocessing.get_context("spawn")
        self._links: list[Link] = []
        self._processes, self._threads = [], []
        processes, spec = inference_layout(spec, cfg.processes, models)
        for number in range(processes):
            pipes = [spawn.Pipe() for _ in range(spec.decode.streams)]
            process = spawn.Process(
                target=inference_process,
                args=([child for _, child in pipes], spec, cfg.model_niceness),
                name=f"nmt-model-{name}-{number}",
                daemon=True,
            )
            process.start()
            for _, child in pipes:  # the process holds them now; closed here, its exit reads as EOF
                child.close()
            self._processes.append(process)
            for stream, (connection, _) in enumerate(pipes):
                link = Link(connection)
                self._links.append(link)
                for role, target in (("send", self._send), ("receive", self._receive)):
                    thread_name = f"nmt-{role}-{name}-{number}.{stream}"
                    self._threads.append(threading.Thread(target=target, args=(link,), name=thread_name, daemon=True))

    def wait_loaded(self) -> None:
        """Block until the model is loaded and warmed up; NmtError if it could not be."""
        for link in self._links:
            try:
                status, detail = link.connection.recv()
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
            if not any(link.alive for link in self._links):
                raise ServiceError(500, f"model {self.name!r} is not running")
            if self._sentences + len(texts) > self.cfg.max_queue:
                raise ServiceError(
                    429, f"the queue of model {self.name!r} is full ({self.cfg.max_queue} sentences); retry later",
                    {"Retry-After": "1"},
                )  # fmt: skip
            self._waiting.append(pending)
            self._count(len(texts))
            self._changed.notify_all()
        return pending

    def withdraw(self, pending: Pending) -> None:
        """A request that gave up: its sentences leave the queue, or the search that has them."""
        with self._changed:
            if pending in self._waiting:
                self._waiting.remove(pending)
                self._count(-len(pending.texts))
                return
            for link in self._links:
                link.cancelled += [key for key, sent in link.in_flight.items() if sent is pending]
            self._changed.notify_all()

    def stop(self) -> None:
        """Answer what was accepted, then stop the processes."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join()
        if all(thread.ident is None for thread in self._threads):  # never started: nobody told the processes
            for link in self._links:
                with contextlib.suppress(OSError):
                    link.connection.send(None)
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()

    def _count(self, change: int) -> None:
        self._sentences += change
        self.metrics.queue.labels(self.name).set(self._sentences)

    def _fits(self, link: Link) -> bool:
        """Whether `link` takes the first waiting request: it fits within batch_tokens, and no other
        stream has less in flight. Balanced streams searched more sentences a step: at 32 clients
        over two processes 14.0 against 12.1-12.7, and served 155.9-159.7 sentences/s against
        147.7-158.2, p99 380-394 ms against 432-479 (three interleaved rounds, 2026-12-03)."""
        if not (link.alive and self._waiting):
            return False
        if link.cost > min(other.cost for other in self._links if other.alive):
            return False
        return not link.cost or link.cost + self._waiting[0].cost <= self.decode.batch_tokens

    def _take(self, link: Link) -> tuple[list[tuple[int, Pending]], list[int]] | None:
        """Wait until a request waits and `link`'s stream has room for it within batch_tokens, or
        a request it has is cancelled; if the stream is idle, up to max_wait_ms more for others, so
        that its first step holds them; then take what fits, and the keys to cancel. None once
        stopping with nothing left to send."""
        with self._changed:
            while not (self._fits(link) or link.cancelled):
                if not link.alive or (self._stopping and not self._waiting and not link.in_flight):
                    return None
                self._changed.wait()
            cancelled, link.cancelled = link.cancelled, []
            if self._fits(link) and not link.cost:
                deadline = time.monotonic() + self.cfg.max_wait_ms / 1000
                while (left := deadline - time.monotonic()) > 0 and not self._stopping:
                    if sum(p.cost for p in self._waiting) >= self.decode.batch_tokens:
                        break
                    self._changed.wait(left)
            taken = []
            while self._fits(link):
                pending = self._waiting.popleft()
                self._count(-len(pending.texts))
                if pending.future.set_running_or_notify_cancel():  # False: its client is gone
                    key = next(self._keys)
                    taken.append((key, pending))
                    link.in_flight[key] = pending
                    link.cost += pending.cost
            if taken:  # another stream may have the least in flight now
                self._changed.notify_all()
            return taken, cancelled

    def _send(self, link: Link) -> None:
        """Send `link`'s stream the requests it has room for and the cancellations; once stopping
        and all are answered, None."""
        while (work := self._take(link)) is not None:
            taken, cancelled = work
            messages = [Cancel(cancelled)] if cancelled else []
            if taken:
                messages.append([(key, pending.options, pending.texts) for key, pending in taken])
            with contextlib.suppress(OSError):  # the model's process died: _receive answers them 500
                for message in messages:
                    link.connection.send(message)
        with contextlib.suppress(OSError):  # the process may be gone already
            link.connection.send(None)

    def _receive(self, link: Link) -> None:
        """Answer the requests of `link`'s stream as they are done; 500 for those in flight if its process dies."""
        while True:
            try:
                answers, batches = link.connection.recv()
            except (EOFError, OSError):
                break
            for sentences, subwords in batches:
                self.metrics.batch_sentences.labels(self.name).observe(sentences)
                self.metrics.batch_tokens.labels(self.name).observe(subwords)
            with self._changed:
                done = [(link.in_flight.pop(key), status, detail) for key, status, detail in answers]
                link.cost -= sum(pending.cost for pending, _, _ in done)
                self._changed.notify_all()
            for pending, status, detail in done:
                if status == "cancelled":  # its client is gone
                    continue
                if status != "ok":  # "error": the request's fault (a text too long), "failed": the model's
                    pending.future.set_exception(ServiceError(422 if status == "error" else 500, detail))
                    continue
                results, subwords = detail
                pending.future.set_result(results)
                self.metrics.tokens.labels(self.name).inc(subwords)
        with self._changed:
            link.alive, link.cost = False, 0
            lost, link.in_flight = list(link.in_flight.values()), {}
            if not any(other.alive for other in self._links):  # nothing will take the waiting requests
                lost += [pending for pending in self._waiting if pending.future.set_running_or_notify_cancel()]
                self._waiting.clear()
                self._count(-self._sentences)
            self._changed.notify_all()
        if lost or not self._stopping:
            log.error("model %s: its process is gone", self.name)
        for pending in lost:
            pending.future.set_exception(ServiceError(500, f"model {self.name!r} is not running"))
