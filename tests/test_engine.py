"""One engine behind every door: what `nmt.evaluate` scores is what `nmt-translate` prints, for
ensembles, int8 and bf16; bf16 and int8 stay close to fp32 on a trained model; validation
searches as the decode config says; interactive input is answered line by line."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from conftest import compose_train

from nmt import checkpoint, metrics, shortlist, synthetic, translate
from nmt.cache import prepare
from nmt.config import DecodeConfig, EvaluateConfig, from_flags
from nmt.evaluate import run as evaluate
from nmt.translator import Translator
from nmt.validation import validate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def test_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """200 pairs of the built-in test split, as files."""
    data = compose_train([]).data
    source, reference = synthetic.generate_split("test", data.synthetic_train_pairs, data.synthetic_seed)
    folder = tmp_path_factory.mktemp("test_set")
    (folder / "test.src").write_text("".join(f"{line}\n" for line in source[:200]), encoding="utf-8")
    (folder / "test.ref").write_text("".join(f"{line}\n" for line in reference[:200]), encoding="utf-8")
    return folder / "test.src", folder / "test.ref"


def ensemble_members(good_run: Path) -> list[Path]:
    members = sorted((good_run / "checkpoints").glob("step-*.pt"))
    assert len(members) == 2
    return members


@pytest.mark.parametrize(
    "flags",
    [
        ["--quantize", "int8"],
        ["--precision", "bf16", "--beam-size", "3", "--nbest", "2"],
        ["--mbr-utility", "chrf", "--mbr-candidates", "4", "--mbr-samples", "2", "--sampling-epsilon", "0.02"],
    ],
    ids=["int8", "bf16", "mbr"],
)
def test_evaluate_scores_exactly_what_translate_prints_for_an_ensemble(
    good_run: Path, test_set: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str]
) -> None:
    source, reference = test_set
    members = ensemble_members(good_run)
    translate.main([*(arg for member in members for arg in ("-m", str(member))), "-i", str(source), "--quiet", *flags])
    printed = capsys.readouterr().out

    decode = from_flags(translate.parser().parse_args(["-m", "unused", *flags]), DecodeConfig)  # the same options
    cfg = EvaluateConfig(
        checkpoints=[str(m) for m in members], decode=decode, source=str(source), reference=str(reference)
    )
    report = evaluate(cfg, tmp_path)

    if decode.nbest > 1:
        assert (tmp_path / "nbest.txt").read_text(encoding="utf-8") == printed
        best = {}
        for row in printed.splitlines():  # the first row of each line number is its best
            number, text, _ = row.split(" ||| ")
            best.setdefault(number, text)
        printed = "".join(f"{text}\n" for text in best.values())
    assert (tmp_path / "hypotheses.txt").read_text(encoding="utf-8") == printed
    assert report["checkpoints"] == [str(m) for m in members] and report["decode"] == asdict(decode)
    assert report["bleu"] >= 90.0


def test_bf16_and_int8_decoding_agree_with_fp32_on_a_trained_model(good_run: Path, test_set: tuple[Path, Path]):
    source, reference = (path.read_text(encoding="utf-8").splitlines() for path in test_set)
    best = good_run / "checkpoints" / "best.pt"

    def system(**decode: object) -> tuple[list[str], float]:
        translator = Translator.from_checkpoints([best], DecodeConfig(**decode))
        hypotheses = [hyps[0].text for hyps in translator.translate(source)]
        return hypotheses, metrics.bleu(hypotheses, reference)[0]

    fp32, fp32_bleu = system()
    assert fp32_bleu >= 90.0
    for variant in ({"precision": "bf16"}, {"quantize": "int8"}):
        hypotheses, bleu = system(**variant)
        same = sum(a == b for a, b in zip(hypotheses, fp32)) / len(fp32)
        assert same >= 0.9 and abs(bleu - fp32_bleu) <= 0.3, (variant, same, bleu, fp32_bleu)


def test_validation_bleu_is_evaluate_on_val_with_the_same_decode_settings(good_run: Path, tmp_path: Path) -> None:
    """What is tuned on val is what runs on test: validation goes through the same engine."""
    # translations cut at half the source length: a search setting that must show in the score; and a
    # small shortlist, the table training builds from its data, as the checkpoint stores it
    settings = {"length_penalty": 0.6, "max_length_ratio": 0.5, "max_length_offset": 0}
    settings |= {"shortlist": True, "shortlist_per_source": 3, "shortlist_frequent": 50}
    cfg = compose_train(["train.valid_beam_size=3", *(f"decode.{key}={value}" for key, value in settings.items())])
    best = good_run / "checkpoints" / "best.pt"
    state = checkpoint.load(best)
    model, _, _, _ = checkpoint.restore(state, best)
    data = prepare(cfg.data)
    table = shortlist.build(data.train, data.src_pipeline.vocab_size, data.tgt_pipeline.vocab_size)
    assert all(torch.equal(table[key], state["shortlist"][key]) for key in ("per_source", "frequent"))
    record = validate(model, data, cfg, lambda batches, description: batches, table)

    search = DecodeConfig(beam_size=3, **settings)
    report = evaluate(EvaluateConfig(checkpoint=str(best), data=cfg.data, decode=search, split="val"), tmp_path)
    assert record["valid_bleu"] == report["bleu"] < 90.0 and record["valid_chrf"] == report["chrf"]


def read_line(process: subprocess.Popen, timeout: float) -> str:
    """One line of the process's stdout, or fail after `timeout` seconds without one."""
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"no answer within {timeout} s"
    return process.stdout.readline()


def test_interactive_input_is_answered_line_by_line(good_run: Path) -> None:
    """A program that writes a line and waits for its translation gets it, then writes the next."""
    best = good_run / "checkpoints" / "best.pt"
    lines = synthetic.generate_split("test", 12000, 1234)[0][:3]
    expected = [hyps[0].text for hyps in Translator.from_checkpoints([best], DecodeConfig()).translate(lines)]
    process = subprocess.Popen(
        [sys.executable, "-m", "nmt.translate", "-m", str(best), "--quiet"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        answers = []
        for line in lines:
            started = time.monotonic()
            process.stdin.write(line + "\n")
            process.stdin.flush()
            answers.append(read_line(process, timeout=60).removesuffix("\n"))
            assert time.monotonic() - started < 60
        process.stdin.close()
        assert process.wait(timeout=60) == 0, process.stderr.read()
    finally:
        process.kill()
    assert answers == expected
