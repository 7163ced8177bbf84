"""The inference process of a served model: it loads the model, then searches the requests the
server sends it (`nmt.model_worker.Worker`) and sends back their answers.

The model lives in a process of its own (spawned), so that torch never waits for the event loop's
GIL (in a thread, next to an asyncio loop busy with loopback round trips, the tiny test model
translated 15-17 batches of 32 sentences a second against 34-38 alone), and the server process
holds no torch at all: torch is imported here only inside the functions that run in the model's
process. Requests join the running beam search at its next step and each is answered when its
last sentence is done (continuous batching, nmt/continuous.py). A sentence's translation does not
depend on the requests it was searched with (fp32 search is batch-invariant).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import signal
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

from nmt.config import DecodeOptions, ServedModel
from nmt.errors import NmtError

log = logging.getLogger(__name__)


def inference_process(connections: list[Connection], spec: ServedModel, niceness: int) -> None:
    """The process that holds one model: it loads and warms up the model, says so on each of its
    connections, then serves each connection (the model's decode.streams: searches run side by
    side, sharing one copy of the model; the last in this thread, the others in threads) until None
    comes. A process of its own, so that torch never waits for the event loop's GIL (in a thread, a
    busy loop starved the model), and so that the parent holds no torch at all. It runs `niceness`
    below the server, so that a flood of requests cannot keep the server from answering /healthz or
    refusing what it cannot take. Ctrl-C reaches the whole process group: the server drains, and
    tells this process when to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(niceness)
    from nmt.translator import Translator  # torch only here

    try:  # loading divides the threads among the streams
        loaded = Translator.from_checkpoints([Path(path) for path in spec.checkpoints], spec.decode)
        loaded.translate(["Warm up ."])  # first-call allocations and kernel choices
    except NmtError as error:
        for connection in connections:
            connection.send(("failed", str(error)))
        return
    # here the streams are the serving threads: each searches its requests in one stream
    translator = Translator(
        loaded.model, loaded.src_pipeline, loaded.tgt_pipeline, dataclasses.replace(loaded.cfg, streams=1)
    )
    languages = (translator.src_pipeline.moses.lang, translator.tgt_pipeline.moses.lang)
    # The last stream runs in this thread, which loaded the model: torch's OpenMP threads belong to
    # the thread that starts a parallel region, so a search in another thread brings threads of its
    # own, more than the cores. Searching in a second thread ran 8-21% slower, 1.5 of 2 cores busy;
    # with OMP_WAIT_POLICY=active (both teams wait busily) at half speed (2026-12-03). Streams in
    # threads of their own have threads / streams intra-op threads each.
    *others, last = connections
    streams = [threading.Thread(target=serve_stream, args=(c, translator, languages)) for c in others]
    for stream in streams:
        stream.start()
    serve_stream(last, translator, languages)
    for stream in streams:
        stream.join()


def serve_stream(connection: Connection, translator: Any, languages: tuple[str, str]) -> None:
    """One stream of an inference process: `translator` searches the requests sent on `connection`,
    which come as lists of (key, options, texts), None to stop (sent once none is in flight); each
    step of the searches sends back (answers, batches) as `Worker._receive` reads. A failure of the
    model (a bug, memory) fails this stream's requests, and the stream goes on."""
    from nmt.continuous import ContinuousBatches, joins  # torch only in the model's process

    connection.send(("ready", languages))
    running, unanswered, stopping = ContinuousBatches(translator), set(), False
    while not stopping or running.busy:
        try:
            requests, cancelled, stop = sent_so_far(connection, wait=not running.busy)
            stopping |= stop
            unanswered.update(key for key, _, _ in requests)
            requests = [request for request in requests if request[0] not in cancelled]
            apart = [r for r in requests if not joins(dataclasses.replace(translator.cfg, **dict(r[1])))]
            answers, batches = translate_apart(translator, apart) if apart else ([], [])
            answers += running.add([request for request in requests if request not in apart])
            if cancelled:
                running.cancel(cancelled)
            if running.busy:
                done, steps = running.step()
                answers, batches = answers + done, batches + steps
            replies = [plain(answer) for answer in answers]
            replies += [(key, "cancelled", "") for key in cancelled & unanswered]  # none of them answered above
        except (EOFError, OSError):  # the server is gone
            return
        except Exception:
            log.exception("the model failed; its requests in this stream fail with 500")
            replies, batches = [(key, "failed", "the model failed; see the server's log") for key in unanswered], []
            running = ContinuousBatches(translator)
        unanswered.difference_update(key for key, _, _ in replies)
        if replies or batches:
            try:
                connection.send((replies, batches))
            except OSError:
                return


class Cancel(NamedTuple):
    """Sent to a stream: the keys of requests whose clients gave up (timed out)."""

    keys: list[int]


def sent_so_far(connection: Connection, wait: bool) -> tuple[list, set[int], bool]:
    """What was sent on `connection` so far (waiting for something if `wait`): the requests, the
    keys of those cancelled, and whether it said stop (None)."""
    requests, cancelled, stop = [], set(), False
    while not stop and ((wait and not (requests or cancelled)) or connection.poll()):
        message = connection.recv()
        if message is None:
            stop = True
        elif isinstance(message, Cancel):
            cancelled.update(message.keys)
        else:
            requests += message
    return requests, cancelled, stop


def translate_apart(translator: Any, requests: list[tuple[int, DecodeOptions, list[str]]]) -> tuple[list, list]:
    """Requests that do not join a search under way (`nmt.continuous.joins`: greedy search,
    sampling, MBR): those with the same options translated together, as one batch; their answers
    and (sentences, source subwords) per batch."""
    from nmt.continuous import Answer
    from nmt.errors import LineError

    groups: dict[DecodeOptions, list[tuple[int, list[str]]]] = collections.defaultdict(list)
    for key, options, texts in requests:
        groups[options].append((key, texts))
    answers, batches = [], []
    for options, group in groups.items():
        searcher = translator.with_options(**dict(options))
        accepted, ids = [], []
        for key, texts in group:
            try:
                ids += searcher.source_ids(texts)
                accepted.append((key, texts))
            except LineError as error:
                answers.append(Answer.refused(key, error))
        if not accepted:
            continue
        results = iter(searcher.translate_ids([text for _, texts in accepted for text in texts], ids))
        answers += [Answer(key, [next(results) for _ in texts]) for key, texts in accepted]
        batches.append((len(ids), sum(len(sentence) for sentence in ids)))
    return answers, batches


def plain(answer: Any) -> tuple[int, str, Any]:
    """An `Answer` as plain data for the pipe: (key, "error", message) or (key, "ok", (per text its
    (text, score, alignment) best first, target subwords of the best translations))."""
    if answer.results is None:
        return answer.key, "error", answer.error
    texts = [[(t.text, t.score, t.alignment) for t in hyps] for hyps in answer.results]
    return answer.key, "ok", (texts, sum(len(hyps[0].tokens) for hyps in answer.results))
