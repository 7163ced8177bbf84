"""The translation service behind `nmt-serve`: a FastAPI app over the translation engine.

Requests wait in a queue per model (`nmt.model_worker.Worker`), from which each is sent to the
model's own process as soon as it has room within decode.batch_tokens; there its sentences join
the running beam search at its next step (continuous batching, `nmt.continuous`), and the request
is answered when its last sentence is done. torch runs in those processes, never on the
event loop nor under its GIL, so /healthz and /metrics answer while a model works. A sentence's translation does
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
import dataclasses
import hmac
import json
import logging
import threading
import time
import typing
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nmt.config import DecodeConfig, ServeConfig, ServedModels
from nmt.model_worker import Metrics, ServiceError, Worker

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
            count = len(models.models)
            workers = {name: Worker(name, spec, cfg, state.metrics, count) for name, spec in models.models.items()}
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

    app.add_middleware(Guard, cfg=cfg, metrics=state.metrics)

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


class Guard:
    """The app's outer layer: the API key, a JSON 500 for anything unforeseen (never a traceback to
    the client), and the count of answers by path and status. A plain ASGI middleware: Starlette's
    `@app.middleware("http")` runs every request through a task group and a memory stream of its
    own, server CPU that a flood of requests takes from /healthz (measured in README, Serve)."""

    def __init__(self, app: ASGIApp, cfg: ServeConfig, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics
        self.bearer = f"Bearer {cfg.api_key}".encode() if cfg.api_key else b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        path, status = scope["path"], 0

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.bearer and path not in PUBLIC_PATHS and not self.authorized(scope):
                error = ServiceError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'")
                await error_response(error)(scope, receive, send_counted)
            else:
                await self.app(scope, receive, send_counted)
        except Exception:  # a bug: the client gets a JSON 500 (if nothing was sent yet), the log the details
            log.exception("%s %s failed", scope["method"], path)
            if not status:
                error = ServiceError(500, "internal error; the server log has the details")
                await error_response(error)(scope, receive, send_counted)
        self.metrics.requests.labels(path if path in KNOWN_PATHS else "other", str(status)).inc()

    def authorized(self, scope: Scope) -> bool:
        given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        return hmac.compare_digest(given, self.bearer)


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
    return state.workers[name], texts, options


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
