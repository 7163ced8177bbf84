"""The Translator and `nmt-translate` on a real trained checkpoint: batching invariance, streaming,
ensembles, int8, sampling, MBR, UNK replacement, and a start-up that stays light."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from sacrebleu import sentence_chrf

from nmt import checkpoint, synthetic
from nmt import translator as translator_module
from nmt.config import LOAD_KEYS, DecodeConfig
from nmt.errors import NmtError
from nmt.model import InferenceModel
from nmt.precision import autocast, quantize_int8
from nmt.search import Hypothesis
from nmt.translator import Translation, Translator
from nmt.vocab import UNK


@pytest.fixture(scope="module")
def restored(trained_checkpoint: Path) -> tuple:
    return checkpoint.restore(checkpoint.load(trained_checkpoint), trained_checkpoint)


@pytest.fixture(scope="module")
def test_lines() -> list[str]:
    data = tiny_config().data
    lines, _ = synthetic.generate_split("test", data.synthetic_train_pairs, data.synthetic_seed)
    return lines[:60]


def translator(restored: tuple, **decode: object) -> Translator:
    model, src, tgt, _ = restored
    return Translator.from_models([model], src, tgt, DecodeConfig(**{"beam_size": 4, "nbest": 3, **decode}))


def assert_same_up_to_ties(actual: list[Translation], expected: list[Translation]) -> None:
    """Same scores within 1e-4 and the same hypotheses, except that two whose scores tie within
    float noise (a barely trained model makes such ties) may change places, also across the n-best cut."""
    assert [t.score for t in actual] == pytest.approx([t.score for t in expected], abs=1e-4)
    for ours, theirs in zip(actual, expected):
        if ours.tokens != theirs.tokens:
            tied = [t.tokens for t in expected if abs(t.score - theirs.score) <= 1e-4]
            assert ours.tokens in tied or abs(ours.score - expected[-1].score) <= 1e-4


@pytest.mark.parametrize("beam_size", [1, 4])
def test_translations_do_not_depend_on_batching_or_order(
    restored: tuple, test_lines: list[str], beam_size: int
) -> None:
    nbest = min(3, beam_size)
    reference = translator(restored, beam_size=beam_size, nbest=nbest).translate(test_lines)
    order = list(range(len(test_lines)))
    random.Random(0).shuffle(order)
    for batch_tokens in (25, 300, 100000):
        shuffled = translator(restored, beam_size=beam_size, nbest=nbest, batch_tokens=batch_tokens).translate(
            [test_lines[i] for i in order]
        )
        for position, index in enumerate(order):
            assert_same_up_to_ties(shuffled[position], reference[index])
    assert all(len(hyps) == nbest for hyps in reference)


def test_with_options_refuses_what_shapes_the_loaded_models(restored: tuple) -> None:
    engine = translator(restored)
    for key in LOAD_KEYS:
        with pytest.raises(ValueError, match=key):
            engine.with_options(**{key: getattr(DecodeConfig(), key)})
    assert engine.with_options(beam_size=2, nbest=2, length_penalty=0.6).cfg.beam_size == 2


@pytest.mark.parametrize("decode", [{}, {"quantize": "int8", "shortlist": True}])
def test_streams_search_batches_side_by_side_with_the_same_results(
    trained_checkpoint: Path, test_lines: list[str], decode: dict
) -> None:
    threads = torch.get_num_threads()
    try:
        settings = {"beam_size": 4, "nbest": 2, "batch_tokens": 80, **decode}  # many batches
        one = Translator.from_checkpoints([trained_checkpoint], DecodeConfig(threads=1, **settings))
        expected = one.translate(test_lines)
        two = Translator.from_checkpoints([trained_checkpoint], DecodeConfig(threads=2, streams=2, **settings))
        assert torch.get_num_threads() == 1  # the two threads shared by the two streams
        assert two.translate(test_lines) == expected
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(("beam_size", "sampling"), [(1, False), (4, False), (4, True)])
def test_a_batch_holds_batch_tokens_of_search_rows_whatever_the_beam(
    restored: tuple, test_lines: list[str], beam_size: int, sampling: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    shapes: list[torch.Size] = []
    search = translator_module.search

    def recording_search(model: object, src: torch.Tensor, *rest: object) -> list:
        shapes.append(src.shape)
        return search(model, src, *rest)

    monkeypatch.setattr(translator_module, "search", recording_search)
    translator(restored, beam_size=beam_size, nbest=1, batch_tokens=200, sampling=sampling).translate(test_lines)

    search_rows = 1 if sampling else beam_size  # a sampled sentence is one row, whatever beam_size says
    row_tokens = [sentences * search_rows * longest for sentences, longest in shapes]  # src: (sentences, longest)
    assert 100 < max(row_tokens) <= 200


def test_an_ensemble_of_one_model_twice_is_that_model(restored: tuple, test_lines: list[str]) -> None:
    model, src, tgt, _ = restored
    cfg = DecodeConfig(beam_size=3, nbest=2)
    alone = Translator.from_models([model], src, tgt, cfg).translate(test_lines[:20])
    twice = Translator.from_models([model, model], src, tgt, cfg).translate(test_lines[:20])
    assert [[t.tokens for t in hyps] for hyps in twice] == [[t.tokens for t in hyps] for hyps in alone]
    assert [[t.score for t in hyps] for hyps in twice] == [[t.score for t in hyps] for hyps in alone]


def test_an_ensemble_of_models_with_different_vocabularies_is_refused(trained_checkpoint: Path, tmp_path: Path) -> None:
    other = checkpoint.load(trained_checkpoint)
    other["tgt_vocab"] = [*other["tgt_vocab"][:-1], "something-else</w>"]
    checkpoint.save(tmp_path / "other.pt", other)
    with pytest.raises(NmtError, match="other.pt: its target vocabulary differs"):
        Translator.from_checkpoints([trained_checkpoint, tmp_path / "other.pt"], DecodeConfig())


def renumbered_bpe(bpe_json: str, swap_merges: bool) -> str:
    """The same BPE model with its pieces numbered in reverse; with `swap_merges`, its first two merges swapped."""
    bpe = json.loads(bpe_json)
    vocab = bpe["model"]["vocab"]
    bpe["model"]["vocab"] = {piece: len(vocab) - 1 - i for piece, i in vocab.items()}
    if swap_merges:
        merges = bpe["model"]["merges"]
        merges[0], merges[1] = merges[1], merges[0]
    return json.dumps(bpe)


def test_an_ensemble_takes_bpe_models_that_split_words_alike_however_they_number_pieces(
    trained_checkpoint: Path, tmp_path: Path
) -> None:
    """Earlier versions learned the same merges with other piece numbers on each run; the vocabularies
    number the pieces a model uses, so such models can be ensembled."""
    other = checkpoint.load(trained_checkpoint)
    other["tgt_bpe"] = renumbered_bpe(other["tgt_bpe"], swap_merges=False)
    checkpoint.save(tmp_path / "other.pt", other)
    Translator.from_checkpoints([trained_checkpoint, tmp_path / "other.pt"], DecodeConfig())
    other["tgt_bpe"] = renumbered_bpe(other["tgt_bpe"], swap_merges=True)
    checkpoint.save(tmp_path / "other.pt", other)
    with pytest.raises(NmtError, match="other.pt: its target BPE model differs"):
        Translator.from_checkpoints([trained_checkpoint, tmp_path / "other.pt"], DecodeConfig())


def test_int8_quantization_replaces_the_layers_and_leaves_the_original(restored: tuple) -> None:
    model, _, _, _ = restored
    quantized = quantize_int8(model)
    dynamic = torch.ao.nn.quantized.dynamic
    assert isinstance(quantized.decoder.recurrent_gates, dynamic.Linear)
    assert isinstance(quantized.output, dynamic.Linear) and isinstance(quantized.encoder.rnn, dynamic.LSTM)
    assert not isinstance(model.output, dynamic.Linear), "the original is untouched"


def test_bf16_holds_bf16_weights_and_translates_as_autocast_over_fp32_weights(
    restored: tuple, test_lines: list[str]
) -> None:
    model, src, tgt, _ = restored
    cfg = DecodeConfig(beam_size=3, nbest=2, precision="bf16")
    translator = Translator.from_models([model], src, tgt, cfg)
    held = translator.model.model
    assert held.decoder.recurrent_gates.weight.dtype == held.output.weight.dtype == torch.bfloat16
    assert held.encoder.rnn.weight_hh_l0 is model.encoder.rnn.weight_hh_l0, "the encoder's fp32 weights are shared"
    assert all(p.dtype == torch.float32 for p in model.parameters()), "the original is untouched"
    with autocast("bf16", torch.device("cpu")):  # autocast casting the fp32 weights at every call
        recasting = Translator(InferenceModel(model), src, tgt, cfg)
    assert translator.translate(test_lines) == recasting.translate(test_lines)


def test_sampling_repeats_with_a_seed_and_varies_without(restored: tuple, test_lines: list[str]) -> None:
    model, src, tgt, _ = restored

    def sampled(seed: int) -> list[str]:
        cfg = DecodeConfig(sampling=True, sampling_topp=0.95, temperature=1.5, seed=seed)
        return [hyps[0].text for hyps in Translator.from_models([model], src, tgt, cfg).translate(test_lines)]

    assert sampled(1) == sampled(1)
    assert sampled(1) != sampled(2)


def test_mbr_returns_the_beam_candidate_that_agrees_most_with_the_others(
    restored: tuple, test_lines: list[str]
) -> None:
    """The oracle: the same beam's n-best, scored pair by pair with sacrebleu's sentence_chrf."""
    model, src, tgt, _ = restored
    lines = test_lines[:12]
    beam = Translator.from_models([model], src, tgt, DecodeConfig(beam_size=6, nbest=6)).translate(lines)
    cfg = DecodeConfig(mbr_utility="chrf", mbr_candidates=6, nbest=3)
    chosen = Translator.from_models([model], src, tgt, cfg).translate(lines)
    differs = 0
    for candidates, ours in zip(beam, chosen):
        texts = [c.text for c in candidates]
        mean = {
            i: sum(sentence_chrf(h, [r]).score for j, r in enumerate(texts) if j != i) / (len(texts) - 1)
            for i, h in enumerate(texts)
            if h not in texts[:i]
        }
        best = sorted(mean, key=lambda i: (-mean[i], i))[:3]
        assert [t.text for t in ours] == [texts[i] for i in best]
        assert [t.score for t in ours] == pytest.approx([mean[i] for i in best])
        assert [t.tokens for t in ours] == [candidates[i].tokens for i in best]
        differs += best[0] != 0
    assert differs, "on some line MBR should choose another translation than beam search's best"


def test_replace_unk_copies_the_most_attended_source_word(restored: tuple) -> None:
    model, src, tgt, _ = restored
    line = "Zorblax the dog sees a cat ."  # an invented word, several subwords long
    words = src.moses.tokenize(line)
    first_piece_of_third_word = sum(len(pieces) for pieces in src.segment([[w] for w in words[:2]]))
    hypothesis = Hypothesis([UNK, UNK], 0.0, 0.0, alignment=[0, first_piece_of_third_word])
    plain = Translator.from_models([model], src, tgt, DecodeConfig()).translation(line, hypothesis)
    replacing = Translator.from_models([model], src, tgt, DecodeConfig(replace_unk=True))
    replaced = replacing.translation(line, hypothesis)
    assert plain.text == "<unk> <unk>"
    assert replaced.text == f"Zorblax {words[2]}"


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nmt.translate", *args], input=stdin, capture_output=True, text=True)


def test_streaming_in_chunks_gives_the_same_output(
    trained_checkpoint: Path, test_lines: list[str], tmp_path: Path
) -> None:
    lines = [*test_lines[:12], "", *test_lines[12:25]]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    common = ["-m", str(trained_checkpoint), "--beam-size", "3", "--nbest", "2", "-i", str(tmp_path / "in.txt")]
    whole = run_cli(*common)
    chunked = run_cli(*common, "--chunk-lines", "7")
    assert whole.returncode == chunked.returncode == 0, chunked.stderr
    # the same rows; scores as in assert_same_up_to_ties, printed to 4 decimals
    rows, expected = ([row.split(" ||| ") for row in out.stdout.splitlines()] for out in (chunked, whole))
    assert [row[:-1] for row in rows] == [row[:-1] for row in expected]
    assert [float(row[-1]) for row in rows] == pytest.approx([float(row[-1]) for row in expected], abs=2e-4)
    numbers = [int(row[0]) for row in rows]
    assert numbers == [i for i, line in enumerate(lines) for _ in range(2 if line else 1)]  # a blank line: one row
    # progress goes to stderr, one line per chunk, and never into the translations
    assert chunked.stderr.count("nmt-translate: ") == 4 and "26 lines" in chunked.stderr
    assert "sentences/s" not in chunked.stdout


def test_invalid_utf8_names_the_line(trained_checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_bytes(b"ok\nfine\nbad \xff byte\n")
    result = run_cli("-m", str(trained_checkpoint), "-i", str(tmp_path / "in.txt"), "--chunk-lines", "2")
    assert result.returncode == 1 and "in.txt:3: invalid UTF-8" in result.stderr
    assert "Traceback" not in result.stderr


def test_translate_does_not_import_the_data_pipeline_or_the_compiler(trained_checkpoint: Path) -> None:
    """`datasets` takes most of a second to import, torch._dynamo more: nmt-translate must start and
    load its models without them (dynamo came with initializing an embedding on the meta device)."""
    code = (
        "import sys, pathlib, nmt.translate; from nmt.config import DecodeConfig; "
        f"nmt.translate.Translator.from_checkpoints([pathlib.Path({str(trained_checkpoint)!r})], DecodeConfig()); "
        "print(sorted(m for m in ('datasets', 'nmt.data', 'torch._dynamo') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
