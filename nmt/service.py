"""The translation service behind `nmt-serve`: a FastAPI app over the translation engine.

Requests put their sentences in a queue per model. A dispatcher thread per model takes the
sentences of all waiting requests (after waiting up to `max_wait_ms` for more) and sends them to
the model's own process, where its `Translator` translates them together in token-budget
batches; then each request is answered. torch runs in those processes, never on the event loop
nor under its GIL, so /healthz and /metrics answer while a model works. A sentence's translation does
not depend on what it was batched with (beam search is batch-invariant in fp32), and every bad
request gets a JSON error with its status code, never touching another request.

    POST /v1/translate  {"text": "..." | ["...", ...], "model"?, "alignments"?, "beam_size"?, "nbest"?, ...}
    GET  /v1/models     ids, languages, decode settings
    GET  /healthz       the process is alive
    GET  /readyz        200 once every model is loaded and warmed up; 503 before, and while draining
    GET  /metrics       Prometheus text format
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import hmac
import json
import logging
import multiprocessing
import threading
import time
import typing
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from nmt.config import DecodeConfig, ServeConfig, ServedModel, ServedModels
from nmt.errors import LineError, NmtError

log = logging.getLogger(__name__)

# DecodeConfig keys a request may set for its own sentences. Sampling is left out (draws would
# depend on the other requests in the batch), and so are the length limits (a huge max_length_ratio
# would let one request hold the worker).
REQUEST_OPTIONS = (
    "beam_size", "nbest", "length_penalty", "coverage_penalty", "min_length", "no_repeat_ngram", "replace_unk",
)  # fmt: skip
PUBLIC_PATHS = ("/healthz",)
KNOWN_PATHS = ("/healthz", "/readyz", "/metrics", "/v1/models", "/v1/translate")  # metrics label others "other"


def request_schema() -> type[BaseModel]:
    """The body of POST /v1/translate: the text, the model, and REQUEST_OPTIONS with DecodeConfig's
    types and help texts (the one schema)."""
    types = typing.get_type_hints(DecodeConfig)
    helps = {item.name: item.metadata["help"] for item in dataclasses.fields(DecodeConfig)}
    options: dict[str, Any] = {
        name: (types[name] | None, Field(None, description=helps[name])) for name in REQUEST_OPTIONS
    }
    return create_model(
        "TranslateRequest",
        __config__=ConfigDict(extra="forbid", strict=True),
        text=(str | list[str], Field(description="one text, or a list of texts translated in order")),
        model=(str | None, Field(None, description="a model id of GET /v1/models; the first one if absent")),
        alignments=(bool, Field(False, description="each translation's hard alignment, i-j subword pairs")),
        **options,
    )


TranslateRequest = request_schema()


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
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


def inference_process(connection: Connection, spec: ServedModel) -> None:
    """The process that holds one model: it loads and warms up the model, says so, then translates
    each batch the parent sends until it sends None. A process of its own, so that torch never
    waits for the event loop's GIL (in a thread, a busy loop starved the model), and so that the
    parent holds no torch at all."""
    from nmt.translator import Translator  # torch only here

    try:
        translator = Translator.from_checkpoints([Path(path) for path in spec.checkpoints], spec.decode)
        translator.translate(["Warm up ."])  # first-call allocations and kernel choices
    except NmtError as error:
        connection.send(("failed", str(error)))
        return
    languages = (translator.src_pipeline.moses.lang, translator.tgt_pipeline.moses.lang)
    connection.send(("ready", languages))
    while (job := connection.recv()) is not None:
        options, requests = job
        connection.send(translate_requests(translator.with_options(**dict(options)), requests))


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
    """One model: its inference process, and the queue from which a dispatcher thread takes the
    sentences of waiting requests to translate them together."""

    def __init__(self, name: str, spec: ServedModel, cfg: ServeConfig, metrics: Metrics) -> None:
        self.name, self.decode, self.cfg, self.metrics = name, spec.decode, cfg, metrics
        self.languages: tuple[str, str] = ("", "")
        self._waiting: collections.deque[Pending] = collections.deque()
        self._sentences = 0  # in _waiting
        self._changed = threading.Condition()
        self._stopping = False
        self._connection, child = multiprocessing.get_context("spawn").Pipe()
        self._process = multiprocessing.get_context("spawn").Process(
            target=inference_process, args=(child, spec), name=f"nmt-model-{name}", daemon=True
        )
        self._process.start()
        self._thread = threading.Thread(target=self._run, name=f"nmt-dispatch-{name}", daemon=True)

    def wait_loaded(self) -> None:
        """Block until the model is loaded and warmed up; NmtError if it could not be."""
        try:
            status, detail = self._connection.recv()
        except EOFError:
            raise NmtError(f"model {self.name!r}: its process ended while loading") from None
        if status == "failed":
            raise NmtError(detail)
        self.languages = detail
        self._thread.start()

    def submit(self, texts: list[str], options: dict[str, Any]) -> Pending:
        with self._changed:
            if self._sentences + len(texts) > self.cfg.max_queue:
                raise ServiceError(
                    429, f"the queue of model {self.name!r} is full ({self.cfg.max_queue} sentences); retry later",
                    {"Retry-After": "1"},
                )  # fmt: skip
            pending = Pending(texts, tuple(sorted(options.items())))
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
            self._changed.notify()
        if self._thread.is_alive():
            self._thread.join()
        with contextlib.suppress(OSError):  # the process may be gone already
            self._connection.send(None)
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()

    def _count(self, change: int) -> None:
        self._sentences += change
        self.metrics.queue.labels(self.name).set(self._sentences)

    def _cost(self, pending: Pending) -> int:
        """Roughly the search rows x source tokens a request adds to a batch (words stand for subwords)."""
        beam = dict(pending.options).get("beam_size") or self.decode.beam_size
        return beam * sum(len(text.split()) + 2 for text in pending.texts)

    def _take(self) -> list[Pending]:
        """Wait for a request, then up to max_wait_ms for others, and take about one batch's worth."""
        with self._changed:
            while not self._waiting and not self._stopping:
                self._changed.wait()
            deadline = time.monotonic() + self.cfg.max_wait_ms / 1000
            while (left := deadline - time.monotonic()) > 0 and not self._stopping:
                if sum(self._cost(p) for p in self._waiting) >= self.decode.batch_tokens:
                    break
                self._changed.wait(left)
            taken, budget = [], self.decode.batch_tokens
            while self._waiting and (not taken or budget >= self._cost(self._waiting[0])):
                pending = self._waiting.popleft()
                self._count(-len(pending.texts))
                if pending.future.set_running_or_notify_cancel():  # False: its client is gone
                    taken.append(pending)
                    budget -= self._cost(pending)
            return taken

    def _run(self) -> None:
        while not self._stopping or self._waiting:
            groups: dict[tuple, list[Pending]] = collections.defaultdict(list)
            for pending in self._take():
                groups[pending.options].append(pending)
            for options, group in groups.items():
                self._translate(options, group)

    def _translate(self, options: tuple, group: list[Pending]) -> None:
        try:
            self._connection.send((options, [pending.texts for pending in group]))
            answers = self._connection.recv()
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


@dataclass
class ServiceState:
    """What the endpoints share: the workers (once loaded), readiness, draining, requests in flight."""

    cfg: ServeConfig
    metrics: Metrics = field(default_factory=Metrics)
    workers: dict[str, Worker] = field(default_factory=dict)
    ready: bool = False
    draining: bool = False
    failed: str = ""
    in_flight: int = 0


def create_app(
    models: ServedModels, cfg: ServeConfig, on_fatal: Callable[[str], None] = lambda message: None
) -> tuple[FastAPI, ServiceState]:
    """The app, and the state it shares with whoever runs it (`nmt.serve` drains it on SIGTERM).
    Each model gets its inference process once the server is up, so /healthz answers at once and
    /readyz turns 200 when every model is loaded and has translated a warm-up sentence. If one
    cannot be loaded, `on_fatal` gets the message."""
    state = ServiceState(cfg)

    def start() -> None:
        try:
            workers = {name: Worker(name, spec, cfg, state.metrics) for name, spec in models.models.items()}
            state.workers.update(workers)
            for worker in workers.values():
                worker.wait_loaded()
        except Exception as error:  # NmtError, or a bug: either way the service cannot serve
            state.failed = str(error)
            log.error("cannot load the models: %s", error)
            on_fatal(str(error))
            return
        state.ready = True
        log.info("ready: %s", ", ".join(state.workers))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = threading.Thread(target=start, name="nmt-loader", daemon=True)
        loader.start()
        yield
        state.draining = True
        for worker in list(state.workers.values()):
            worker.stop()

    app = FastAPI(title="nmt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url="/v1/openapi.json")

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable) -> Response:
        path = request.url.path
        try:
            if cfg.api_key and path not in PUBLIC_PATHS:
                given = request.headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {cfg.api_key}".encode()):
                    raise ServiceError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'")
            response = await call_next(request)
        except ServiceError as error:
            response = error_response(error)
        except Exception:  # the last line of defence: a JSON 500, never a traceback to the client
            log.exception("%s %s failed", request.method, path)
            response = error_response(ServiceError(500, "internal error; the server log has the details"))
        state.metrics.requests.labels(path if path in KNOWN_PATHS else "other", str(response.status_code)).inc()
        return response

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError) -> Response:
        return error_response(error)

    @app.exception_handler(404)
    async def not_found(request: Request, error: Exception) -> Response:
        return error_response(ServiceError(404, f"no endpoint {request.method} {request.url.path}"))

    @app.exception_handler(405)
    async def wrong_method(request: Request, error: Exception) -> Response:
        return error_response(ServiceError(405, f"{request.url.path} does not take {request.method}"))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> Response:
        if state.ready and not state.draining:
            return JSONResponse({"status": "ready", "models": list(state.workers)})
        reason = "draining" if state.draining else f"failed: {state.failed}" if state.failed else "loading"
        return error_response(ServiceError(503, f"not ready: {reason}"))

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        ready(state)
        return {
            "models": [
                {
                    "id": name,
                    "source_language": worker.languages[0],
                    "target_language": worker.languages[1],
                    "decode": dataclasses.asdict(worker.decode),
                }
                for name, worker in state.workers.items()
            ]
        }

    @app.post("/v1/translate")
    async def translate(request: Request) -> Response:
        ready(state)
        started = time.monotonic()
        state.in_flight += 1
        try:
            body = parse(await read_body(request, cfg.max_body_bytes))
            worker, texts, options = admit(body, state)
            pending = worker.submit(texts, options)
            try:
                results = await asyncio.wait_for(asyncio.wrap_future(pending.future), cfg.timeout_s)
            except TimeoutError:
                worker.withdraw(pending)
                raise ServiceError(
                    504, f"not translated within timeout_s={cfg.timeout_s}; retry, or send fewer texts"
                ) from None
        finally:
            state.in_flight -= 1
        state.metrics.latency.observe(time.monotonic() - started)
        nbest = options.get("nbest", worker.decode.nbest)
        return JSONResponse(answer(worker.name, results, body.alignments, nbest > 1))

    return app, state


def error_response(error: ServiceError) -> JSONResponse:
    body = {"error": {"status": error.status, "message": error.message}}
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def ready(state: ServiceState) -> None:
    if state.draining:
        raise ServiceError(503, "shutting down; send the request to another instance", {"Retry-After": "1"})
    if not state.ready:
        raise ServiceError(503, "the models are still loading; retry when /readyz answers 200", {"Retry-After": "1"})


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes (announced or actual)."""
    too_large = ServiceError(413, f"request body over max_body_bytes={limit}")
    if int(request.headers.get("content-length") or 0) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def parse(body: bytes) -> BaseModel:
    try:
        payload = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ServiceError(400, "the body is not UTF-8") from None
    except json.JSONDecodeError as error:
        raise ServiceError(400, f"the body is not JSON ({error})") from None
    try:
        return TranslateRequest.model_validate(payload)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'body'}: {item['msg']}" for item in error.errors()[:5]
        )
        raise ServiceError(422, problems) from None


def admit(body: BaseModel, state: ServiceState) -> tuple[Worker, list[str], dict[str, Any]]:
    """The worker, texts and search options of a well-formed request, within the server's limits."""
    cfg = state.cfg
    texts = [body.text] if isinstance(body.text, str) else body.text
    if len(texts) > cfg.max_sentences:
        raise ServiceError(413, f"{len(texts)} texts, over max_sentences={cfg.max_sentences}; send fewer at a time")
    for index, text in enumerate(texts):
        if len(text) > cfg.max_chars:
            raise ServiceError(413, f"text {index} has {len(text)} characters, over max_chars={cfg.max_chars}")
    name = body.model or next(iter(state.workers))
    if name not in state.workers:
        raise ServiceError(404, f"no model {name!r}; GET /v1/models lists them")
    options = {key: getattr(body, key) for key in REQUEST_OPTIONS if getattr(body, key) is not None}
    if options.get("beam_size", 1) > cfg.max_beam_size:
        raise ServiceError(422, f"beam_size {options['beam_size']} is over max_beam_size={cfg.max_beam_size}")
    if options.get("nbest", 1) > cfg.max_nbest:
        raise ServiceError(422, f"nbest {options['nbest']} is over max_nbest={cfg.max_nbest}")
    worker = state.workers[name]
    try:
        dataclasses.replace(worker.decode, **options)  # the same checks as everywhere (nbest <= beam_size, ...)
    except NmtError as error:
        raise ServiceError(422, str(error).removeprefix("config: decode.")) from None
    return worker, texts, options


def answer(model: str, results: list[list[tuple]], alignments: bool, nbest: bool) -> dict[str, Any]:
    """The JSON of POST /v1/translate from (text, score, alignment) per hypothesis, best first."""

    def hypothesis(translation: tuple[str, float, list[int]]) -> dict[str, Any]:
        text, score, alignment = translation
        item: dict[str, Any] = {"text": text, "score": score}
        if alignments:
            item["alignment"] = [[i, j] for j, i in enumerate(alignment)]
        return item

    translations = []
    for hyps in results:
        item = hypothesis(hyps[0])
        if nbest:
            item["hypotheses"] = [hypothesis(h) for h in hyps]
        translations.append(item)
    return {"model": model, "translations": translations}
