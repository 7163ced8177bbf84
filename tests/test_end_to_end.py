"""The whole path a user walks: train, translate, evaluate, through the real entry points."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_train

from nmt.config import EvaluateConfig, register_configs
from nmt.evaluate import run as evaluate
from nmt.synthetic import generate_split
from nmt.train import run as train

REPO = Path(__file__).resolve().parents[1]

register_configs()


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], input=stdin, capture_output=True, text=True, cwd=REPO, timeout=300
    )


def test_default_recipe_reaches_high_bleu_on_a_reduced_budget(good_run, tmp_path):
    """The default config (corpus, model, optimizer) with a step cap instead of the 4-minute budget:
    a floor that a broken model, search or pipeline cannot reach."""
    cfg = compose_train([])
    report = evaluate(
        EvaluateConfig(checkpoint=str(good_run / "checkpoints" / "best.pt"), data=cfg.data, decode=cfg.decode),
        tmp_path / "eval",
    )
    assert report["bleu"] >= 90.0, report
    summary = json.loads((good_run / "summary.json").read_text())
    assert summary["steps"] == 600 and summary["best_validation"]["valid_bleu"] >= 90.0
    assert summary["best_checkpoint"].endswith("best.pt") and summary["parameters"] > 0


@pytest.mark.parametrize(("experiment", "langs"), [("multi30k_ende", ("en", "de")), ("multi30k_deen", ("de", "en"))])
def test_multi30k_experiments_compose_and_train_a_few_steps(experiment, langs, multi30k_dir, tmp_path):
    # validation by loss: a greedy pass over the 1,014 validation sentences would dominate the test
    overrides = [f"experiment={experiment}", f"data.dir={multi30k_dir}", "train.max_steps=3", "train.valid_metric=loss"]
    cfg = compose_train(overrides)
    assert (cfg.data.src_lang, cfg.data.tgt_lang) == langs and cfg.model.hidden_size == 512

    train(cfg, tmp_path)

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 3
    assert (tmp_path / "checkpoints" / "best.pt").is_file()


def test_translate_cli_file_and_stdin(trained_checkpoint, tmp_path):
    source, _ = generate_split("test", 3000, 1234)
    lines = [*source[:20], "", source[20]]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    result = run_cli(
        "nmt.translate",
        "-m",
        str(trained_checkpoint),
        "-i",
        str(tmp_path / "in.txt"),
        "-o",
        str(tmp_path / "out.txt"),
        "--beam-size",
        "3",
    )
    assert result.returncode == 0, result.stderr
    output = (tmp_path / "out.txt").read_text().split("\n")[:-1]
    assert len(output) == len(lines)
    assert output[20] == "" and all(output[:20])

    piped = run_cli("nmt.translate", "-m", str(trained_checkpoint), "--beam-size", "3", stdin="\n".join(lines) + "\n")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.split("\n")[:-1] == output


def test_translate_cli_nbest(trained_checkpoint):
    source, _ = generate_split("test", 3000, 1234)
    result = run_cli(
        "nmt.translate",
        "-m",
        str(trained_checkpoint),
        "--beam-size",
        "4",
        "--nbest",
        "3",
        stdin="\n".join(source[:5]) + "\n",
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split(" ||| ") for line in result.stdout.splitlines()]
    assert [int(row[0]) for row in rows] == [i for i in range(5) for _ in range(3)]
    for sentence in range(5):
        scores = [float(row[2]) for row in rows if int(row[0]) == sentence]
        assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("model_file", ["missing.pt", "not_a_checkpoint.pt"])
def test_translate_cli_bad_checkpoint_is_one_line(tmp_path, model_file):
    (tmp_path / "not_a_checkpoint.pt").write_text("hello")
    result = run_cli("nmt.translate", "-m", str(tmp_path / model_file), stdin="a b c\n")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and str(tmp_path / model_file) in result.stderr
    assert "Traceback" not in result.stderr


def test_translate_cli_missing_input(trained_checkpoint, tmp_path):
    result = run_cli("nmt.translate", "-m", str(trained_checkpoint), "-i", str(tmp_path / "nope.txt"))
    assert result.returncode == 1 and "nope.txt: file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_evaluate_cli_writes_report(trained_checkpoint, tmp_path):
    result = run_cli(
        "nmt.evaluate",
        f"checkpoint={trained_checkpoint}",
        "data.synthetic_train_pairs=3000",
        "decode.beam_size=2",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    for key in ("bleu", "chrf", "signature", "sentences", "seconds", "sentences_per_second", "checkpoints"):
        assert key in report
    assert report["sentences"] == 1000 and "BLEU" in result.stderr + result.stdout
    assert len((tmp_path / "hypotheses.txt").read_text().splitlines()) == 1000


def test_evaluate_sweeps_over_decode_options(trained_checkpoint, tmp_path):
    result = run_cli(
        "nmt.evaluate", "-m", f"checkpoint={trained_checkpoint}", "data.synthetic_train_pairs=3000",
        "decode.beam_size=2", "decode.length_penalty=0.0,1.4", f"hydra.sweep.dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    reports = [json.loads((tmp_path / str(job) / "report.json").read_text()) for job in (0, 1)]
    assert [report["decode"]["length_penalty"] for report in reports] == [0.0, 1.4]


def test_evaluate_cli_mismatched_parallel_files(trained_checkpoint, tmp_path):
    (tmp_path / "src.txt").write_text("a\nb\nc\n")
    (tmp_path / "ref.txt").write_text("a\nb\n")
    result = run_cli(
        "nmt.evaluate",
        f"checkpoint={trained_checkpoint}",
        f"source={tmp_path / 'src.txt'}",
        f"reference={tmp_path / 'ref.txt'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 1
    message = result.stderr.strip()
    assert "src.txt has 3 lines" in message and "ref.txt has 2" in message
    assert "Traceback" not in result.stderr


def test_train_cli_rejects_a_config_typo(tmp_path):
    result = run_cli("nmt.train", "model.hiden_size=10", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0 and "hiden_size" in result.stderr
    assert "Traceback" not in result.stderr


def test_train_cli_rejects_an_impossible_value(tmp_path):
    result = run_cli("nmt.train", "model.hidden_size=0", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 1 and "model.hidden_size" in result.stderr
    assert "Traceback" not in result.stderr


def slice_of(source: Path, target: Path, lines: int) -> None:
    with gzip.open(source, "rt", encoding="utf-8") as file:
        head = [next(file) for _ in range(lines)]
    with gzip.open(target, "wt", encoding="utf-8") as file:
        file.writelines(head)


def test_multi30k_slice_trains_and_evaluates(multi30k_dir, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for split, lines in (("train", 2000), ("val", 100), ("test_2016_flickr", 100)):
        for lang in ("en", "de"):
            slice_of(multi30k_dir / f"{split}.{lang}.gz", data_dir / f"{split}.{lang}.gz", lines)
    cfg = compose_train(
        [
            "data=multi30k",
            f"data.dir={data_dir}",
            "data.bpe_vocab_size=2000",
            "model.hidden_size=128",
            "model.embed_size=64",
            "train.max_steps=30",
            "train.max_epochs=0",
            "train.max_minutes=0",
        ]
    )
    train(cfg, tmp_path / "run")
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 30 and "valid_bleu" in metrics[-1]
    report = evaluate(
        EvaluateConfig(
            checkpoint=str(tmp_path / "run" / "checkpoints" / "best.pt"),
            data=cfg.data,
            decode=cfg.decode,
            tokenized_lc=True,
        ),
        tmp_path / "eval",
    )
    assert report["sentences"] == 100 and 0.0 <= report["bleu"] <= 100.0
    assert "tok:13a" in report["signature"] and "case:lc" in report["signature_tok_lc"]
