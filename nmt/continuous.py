"""Continuous batching: requests' sentences join a beam search under way, between two of its steps.

A static batch runs until its slowest sentence ends, while the requests that arrived meanwhile
wait for the next; a served model whose clients each wait for their last answer before asking
again then translates half-empty batches. Here every request's sentences join the running search
(`nmt.search.BeamSearch`) of requests with the same search options at its next step, and each
request is answered as soon as its last sentence is done, so the batch stays as full as the
clients keep it. A sentence's translation is the one it gets alone (fp32; tested).

Sampling and MBR cannot join a search under way: their requests are translated as a batch of
their own (`Translator.translate`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nmt.config import DecodeConfig, DecodeOptions
from nmt.errors import LineError
from nmt.precision import autocast
from nmt.search import BeamSearch
from nmt.translator import Translation, Translator
from nmt.vocab import pad

JOIN_WAIT = 3  # steps a sentence waits at most to join a search under way (`Lane.join`)
AFTER_SEARCH = ("nbest", "replace_unk")  # options that only choose among or write out finished hypotheses


def joins(cfg: DecodeConfig) -> bool:
    """Whether requests searched with `cfg` join a search under way: beam search, not sampled, no
    MBR. Greedy search is `nmt-translate`'s own (a beam of one may break ties otherwise), and cheap
    enough to batch apart."""
    return cfg.beam_size > 1 and not cfg.sampling and cfg.mbr_utility == "none"


@dataclass
class Request:
    translator: Translator  # the model with the request's options: its n-best and how it writes them
    texts: list[str]
    results: list[list[Translation] | None]
    left: int  # sentences not done yet


@dataclass
class Answer:
    key: Any
    results: list[list[Translation]] | None  # per text, its translations best first; None if refused
    error: str = ""  # why the request was refused (a text's LineError)

    @staticmethod
    def refused(key: Any, error: LineError) -> Answer:
        return Answer(key, None, f"text {error.index}: {error.reason}")


@dataclass
class Lane:
    """The search of the requests with one set of options, and the sentences waiting to join it."""

    translator: Translator  # the model with those options
    search: BeamSearch
    waiting: list[tuple[Any, int]] = field(default_factory=list)  # (request key, text index) of each
    ids: list[np.ndarray] = field(default_factory=list)  # their source ids
    waited: int = 0  # steps the first of them has waited

    def join(self) -> None:
        """Let the waiting sentences join at the next step if they are a quarter of the live ones
        or have waited JOIN_WAIT steps: encoding one to three sentences took 3.5-3.8 ms, a quarter
        of a step at 32 live sentences (its time steps run one by one), and joining at every step
        spent 18% of the time (in one process: 110 sentences/s against 123 joining 8 at a time)."""
        live = len(self.search.keys)
        if not self.waiting or (4 * len(self.waiting) < live and self.waited < JOIN_WAIT):
            self.waited += bool(self.waiting)
            return
        lengths = torch.tensor([len(sentence) for sentence in self.ids])
        with autocast(self.translator.cfg.precision, self.translator.device):
            self.search.add(pad(self.ids).to(self.translator.device), lengths, self.waiting)
        self.waiting, self.ids, self.waited = [], [], 0


class ContinuousBatches:
    """The running searches of one model, one per set of search options, that requests join."""

    def __init__(self, translator: Translator) -> None:
        self.translator = translator
        self.lanes: dict[DecodeOptions, Lane] = {}
        self.requests: dict[Any, Request] = {}

    @property
    def busy(self) -> bool:
        return bool(self.lanes)

    def add(self, requests: list[tuple[Any, DecodeOptions, list[str]]]) -> list[Answer]:
        """Requests (key, options, texts) whose options `joins`; their sentences will join the
        search for their options (`Lane.join`). Answered at once: requests with nothing to search
        (blank texts only) and those with a text over max_source_length."""
        answers = []
        for key, options, texts in requests:
            translator = self.translator.with_options(**dict(options))
            try:
                ids = translator.source_ids(texts)
            except LineError as error:
                answers.append(Answer.refused(key, error))
                continue
            blank = [Translation.blank()]
            request = Request(translator, texts, [None if len(s) else blank for s in ids], sum(len(s) > 0 for s in ids))
            if not request.left:
                answers.append(Answer(key, request.results))
                continue
            self.requests[key] = request
            lane = self._lane(tuple(item for item in options if item[0] not in AFTER_SEARCH))
            for index, sentence in enumerate(ids):
                if len(sentence):
                    lane.waiting.append((key, index))
                    lane.ids.append(sentence)
        return answers

    def _lane(self, options: DecodeOptions) -> Lane:
        """The lane of requests searched alike; its search keeps every finished hypothesis (up to
        the beam), of which each request takes its own n-best."""
        if options not in self.lanes:
            searcher = self.translator.with_options(**dict(options))
            searcher = searcher.with_options(nbest=searcher.cfg.beam_size)
            self.lanes[options] = Lane(searcher, BeamSearch(searcher.model, searcher.cfg))
        return self.lanes[options]

    def cancel(self, keys: Collection[Any]) -> None:
        """Requests nobody waits for any more: their waiting sentences leave, searched ones end at the next step."""
        for key in keys:
            self.requests.pop(key, None)
        for options, lane in list(self.lanes.items()):
            kept = [i for i, (key, _) in enumerate(lane.waiting) if key not in keys]
            lane.waiting, lane.ids = [lane.waiting[i] for i in kept], [lane.ids[i] for i in kept]
            if not lane.waiting:
                lane.waited = 0
            lane.search.drop([sentence for sentence in lane.search.keys if sentence[0] in keys])
            if not lane.search.keys and not lane.waiting:
                del self.lanes[options]

    def step(self) -> tuple[list[Answer], list[tuple[int, int]]]:
        """One step of every running search: the requests now done, and per search its live
        sentences and their source subwords (the step's batch)."""
        answers, batches = [], []
        for options, lane in list(self.lanes.items()):
            lane.join()  # a lane holds live or waiting sentences, and waiting ones join an idle search
            search = lane.search
            batches.append((len(search.keys), sum(search.src_lengths)))
            with autocast(lane.translator.cfg.precision, lane.translator.device):
                done = search.step()
            for (key, index), hypotheses in done:
                request = self.requests.get(key)
                if request is None:  # cancelled
                    continue
                writer, text = request.translator, request.texts[index]
                request.results[index] = [writer.translation(text, h) for h in hypotheses[: writer.cfg.nbest]]
                request.left -= 1
                if not request.left:
                    del self.requests[key]
                    answers.append(Answer(key, request.results))
            if not search.keys and not lane.waiting:
                del self.lanes[options]
        return answers, batches
