"""Continuous batching: requests that join running searches get what they would get alone."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import pytest
from conftest import tiny_config

from nmt import synthetic
from nmt.config import DecodeConfig
from nmt.continuous import Answer, ContinuousBatches
from nmt.inference_process import Cancel, serve_stream, translate_apart
from nmt.translator import Translator


def test_requests_that_join_searches_under_way_get_their_own_translations(trained_checkpoint: Path) -> None:
    """Requests arrive while others are searched, some with another length penalty (a search of
    their own) or n-best (the same search); each is answered when its last sentence is done, with
    what translating it alone gives; blank requests and a text over max_source_length are answered
    at once, harming nobody."""
    translator = Translator.from_checkpoints([trained_checkpoint], DecodeConfig(beam_size=3, max_source_length=40))
    data = tiny_config().data
    lines = synthetic.generate_split("test", data.synthetic_train_pairs, data.synthetic_seed)[0][:12]
    nbest, other_penalty = (("nbest", 2),), (("length_penalty", 0.4), ("nbest", 3))
    arrivals = {
        0: [(0, (), lines[:3]), (1, nbest, [lines[3], ""]), (2, (), ["", " "])],
        2: [(3, (), lines[4:8]), (4, (), [lines[8], " ".join(["word"] * 60)])],
        3: [(5, other_penalty, lines[9:12])],
    }
    batches = ContinuousBatches(translator)
    answers: dict[int, Answer] = {}
    steps, answered_at = [], {}
    for step in range(200):
        for answer in batches.add(arrivals.get(step, [])):
            answers[answer.key] = answer
            answered_at[answer.key] = step
        if not batches.busy and step > max(arrivals):
            break
        done, searched = batches.step()
        steps.append(searched)
        for answer in done:
            answers[answer.key] = answer
            answered_at[answer.key] = step

    assert answered_at[2] == 0 and answers[2].results[0][0].text == ""  # blank: nothing to search
    assert answered_at[4] == 2 and "text 1:" in answers[4].error and "over max_source_length=40" in answers[4].error
    assert min(answered_at[0], answered_at[1]) > 3, "the later requests did not join searches under way"
    assert len(steps[0]) == 1, "requests that differ in n-best only share a search"
    assert any(len(searched) == 2 for searched in steps), "another length penalty needs a search of its own"
    for key, options, texts in [request for requests in arrivals.values() for request in requests]:
        if key == 4:
            continue
        alone = translator.with_options(**dict(options)).translate(texts)
        got = answers[key].results
        assert [[t.text for t in hyps] for hyps in got] == [[t.text for t in hyps] for hyps in alone]
        # the same hypotheses; their scores may differ in the last bits, as matrix products of other shapes round
        assert [t.score for hyps in got for t in hyps] == pytest.approx([t.score for hyps in alone for t in hyps])


def test_a_cancelled_request_leaves_the_search_and_the_queue_and_the_others_are_unchanged(
    trained_checkpoint: Path,
) -> None:
    translator = Translator.from_checkpoints([trained_checkpoint], DecodeConfig(beam_size=3))
    data = tiny_config().data
    lines = synthetic.generate_split("test", data.synthetic_train_pairs, data.synthetic_seed)[0][:6]
    batches = ContinuousBatches(translator)
    batches.add([(0, (), lines[:3]), (1, (), lines[3:])])
    answers = batches.step()[0] + batches.step()[0]
    batches.add([(2, (), lines[:2])])  # waits to join
    (lane,) = batches.lanes.values()
    assert {key for key, _ in lane.search.keys} == {0, 1} and lane.waiting
    batches.cancel([0, 2])
    answers += batches.step()[0]
    assert {key for key, _ in lane.search.keys} <= {1} and not lane.waiting
    while batches.busy:
        answers += batches.step()[0]
    assert [answer.key for answer in answers] == [1]
    alone = translator.translate(lines[3:])
    assert [[t.text for t in hyps] for hyps in answers[0].results] == [[t.text for t in hyps] for hyps in alone]


def test_greedy_requests_are_translated_apart_in_one_batch_and_a_bad_one_is_refused_alone(
    trained_checkpoint: Path,
) -> None:
    translator = Translator.from_checkpoints([trained_checkpoint], DecodeConfig(beam_size=3, max_source_length=40))
    data = tiny_config().data
    lines = synthetic.generate_split("test", data.synthetic_train_pairs, data.synthetic_seed)[0][:3]
    greedy = (("beam_size", 1),)
    requests = [(1, greedy, lines[:2]), (2, greedy, ["a", " ".join(["word"] * 60)]), (3, greedy, [lines[2], ""])]
    answers, batches = translate_apart(translator, requests)
    by_key = {answer.key: answer for answer in answers}
    assert by_key[2].results is None and by_key[2].error.startswith("text 1:")
    alone = translator.with_options(beam_size=1).translate(lines)
    got = [*by_key[1].results, by_key[3].results[0]]
    assert [[t.text for t in hyps] for hyps in got] == [[t.text for t in hyps] for hyps in alone]
    assert by_key[3].results[1][0].text == ""
    assert batches == [(4, sum(len(ids) for ids in translator.source_ids(lines)))]


def test_a_stream_fails_the_requests_a_model_error_hits_then_goes_on_and_stops_when_told(
    trained_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inference process's loop over a real pipe: a search that raises fails the requests in
    it (status "failed", the server answers 500) and the stream serves the next ones; None stops it."""
    translator = Translator.from_checkpoints([trained_checkpoint], DecodeConfig(beam_size=2))
    server, model = multiprocessing.Pipe()
    stream = threading.Thread(target=serve_stream, args=(model, translator, ("src", "tgt")))
    stream.start()
    assert server.recv() == ("ready", ("src", "tgt"))

    def replies() -> list[tuple]:
        answered = []
        while not answered:
            assert server.poll(30), "the stream did not answer"
            answers, _ = server.recv()
            answered += answers
        return answered

    real_step = ContinuousBatches.step
    monkeypatch.setattr(ContinuousBatches, "step", lambda self: 1 / 0)
    server.send([(1, (), ["a b c"]), (2, (), ["d e"])])
    assert sorted((key, status) for key, status, _ in replies()) == [(1, "failed"), (2, "failed")]
    monkeypatch.setattr(ContinuousBatches, "step", real_step)
    server.send([(3, (), ["a b c"])])
    ((key, status, (texts, _)),) = replies()
    assert (key, status, texts[0][0][0]) == (3, "ok", translator.translate(["a b c"])[0][0].text)
    server.send(None)
    stream.join(timeout=30)
    assert not stream.is_alive()


def test_a_stream_drops_a_cancelled_request_before_or_during_its_search(trained_checkpoint: Path) -> None:
    """A request cancelled in the same message batch is never searched; one cancelled during its
    search leaves it at the next step: no step after its "cancelled" reply."""
    translator = Translator.from_checkpoints([trained_checkpoint], DecodeConfig(beam_size=2))
    server, model = multiprocessing.Pipe()
    long = [" ".join(["a b c"] * 20)] * 4
    server.send([(1, (), long)])
    server.send(Cancel([1]))  # both wait in the pipe before the stream reads
    stream = threading.Thread(target=serve_stream, args=(model, translator, ("src", "tgt")))
    stream.start()
    assert server.recv() == ("ready", ("src", "tgt"))
    assert server.recv() == ([(1, "cancelled", "")], []), "searched although cancelled"

    server.send([(2, (("min_length", 100),), long)])  # at least 100 steps
    assert server.poll(30)
    answers, batches = server.recv()
    assert answers == [] and batches, "a step of request 2"
    server.send(Cancel([2]))
    while not answers:
        assert server.poll(30)
        answers, _ = server.recv()
    assert answers == [(2, "cancelled", "")]
    server.send(None)
    stream.join(timeout=30)
    assert not stream.is_alive()
    later = []
    while server.poll():
        later.append(server.recv())
    assert later == [], "the cancelled request's search went on"
