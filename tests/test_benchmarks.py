"""The benchmark scripts run on a few steps and print the documented keys (their figures are not tested)."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_script(*args: str) -> list[dict]:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_bench_train_prints_throughput_flops_and_memory(multi30k_dir):
    (report,) = run_script(
        "scripts/bench_train.py", "--steps", "3", "--warmup", "1", f"data.dir={multi30k_dir}",
        "model.embed_size=32", "model.hidden_size=64", "data.bpe_vocab_size=2000",
    )  # fmt: skip
    for key in (
        "tgt_tokens_per_s", "src_tokens_per_s", "tgt_padding_fraction", "flops_per_tgt_token", "achieved_gflops",
        "gemm_peak_gflops_fp32", "gemm_peak_gflops_bf16", "mfu_vs_fp32_peak", "mfu_vs_bf16_peak",
        "data_wait_fraction", "peak_rss_mb", "precision", "threads", "torch", "device",
    ):  # fmt: skip
        assert key in report
    assert report["tgt_tokens_per_s"] > 0 and report["mfu_vs_fp32_peak"] > 0


def test_bench_decode_prints_the_frontier_the_grid_and_the_process(trained_checkpoint, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    from nmt.synthetic import generate_split

    src, tgt = generate_split("test", 3000, 1234)
    (data_dir / "test.src.gz").write_bytes(gzip.compress(("\n".join(src[:30]) + "\n").encode()))
    (data_dir / "test.tgt.gz").write_bytes(gzip.compress(("\n".join(tgt[:30]) + "\n").encode()))
    common = ["scripts/bench_decode.py", str(trained_checkpoint), "--data-dir", str(data_dir), "--split", "test"]
    reports = run_script(*common, "--settings", "2-fp32,1-int8-sl", "--baseline-sentences", "5",
                         "--plot", str(tmp_path / "frontier.png"))  # fmt: skip
    fp32, int8, start, *processes = reports
    assert (fp32["setting"], int8["setting"]) == ("2-fp32", "1-int8-sl") and not fp32["shortlist"]
    for report in (fp32, int8):
        assert report["sentences_per_second"] > 0 and report["peak_rss_mb"] > 0 and "bleu" in report
    assert int8["shortlist"] and int8["mean_shortlist_size"] > 0 and "baseline_sentences_per_s" in int8
    assert start["import_nmt_translate_seconds"] > 0
    # the whole process at the fastest setting of each beam: here the only one of beams 1 and 2
    assert [process["setting"] for process in processes] == [
        f"nmt-translate process, {r}" for r in ("1-int8-sl", "2-fp32")
    ]
    for process, setting in zip(processes, (int8, fp32)):
        assert process["sentences"] == 30 and ("--shortlist" in process["command"]) == setting["shortlist"]
    assert (tmp_path / "frontier.png").read_bytes().startswith(b"\x89PNG")

    grid = run_script(*common, "--grid", "1,3:0,20")
    assert [report["shortlist_k_n"] for report in grid] == [None, [1, 0], [1, 20], [3, 0], [3, 20]]
    assert grid[0]["bleu_change"] == 0 and all("size_1_sentences" in report for report in grid[1:])
    assert grid[1]["size_decoding_batches"] <= grid[4]["size_decoding_batches"], "more candidates, more pieces"


def test_bench_decode_takes_the_peer_only_on_its_test_split(trained_checkpoint):
    result = subprocess.run(
        [sys.executable, "scripts/bench_decode.py", str(trained_checkpoint), "--peer-venv", "/nonexistent",
         "--split", "val"], capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 2 and "test_2016_flickr" in result.stderr


def test_bench_continuous_prints_each_setting_against_the_translator(trained_checkpoint, tmp_path):
    from nmt.synthetic import generate_split

    src, _ = generate_split("test", 3000, 1234)
    (tmp_path / "test.src.gz").write_bytes(gzip.compress(("\n".join(src[:20]) + "\n").encode()))
    args = ["--data-dir", str(tmp_path), "--source", "test.src.gz", "--live", "4,8", "--beam-size", "2"]
    whole, *reports = run_script("scripts/bench_continuous.py", str(trained_checkpoint), *args)
    assert whole["setting"] == "Translator.translate" and whole["sentences_per_second"] > 0
    assert [(r["setting"], r["live"]) for r in reports] == [(s, n) for n in (4, 8) for s in ("continuous", "static")]
    for report in reports[::2]:  # continuous: never more sentences in a step than in flight
        assert 1 <= report["sentences_per_step"] <= report["live"] and report["steps"] > 0


def test_bench_serve_prints_each_level_against_its_own_translate_run(trained_checkpoint, tmp_path):
    from nmt.synthetic import generate_split

    src, _ = generate_split("test", 3000, 1234)
    (tmp_path / "test.src.gz").write_bytes(gzip.compress(("\n".join(src[:20]) + "\n").encode()))
    args = ["--data-dir", str(tmp_path), "--source", "test.src.gz", "--levels", "1,4", "--seconds", "1"]
    *levels, baseline = run_script("scripts/bench_serve.py", str(trained_checkpoint), *args)
    assert [level["clients"] for level in levels] == [1, 4]
    assert baseline["runs"] == [level["nmt_translate_sentences_per_second"] for level in levels]
    for level in levels:  # every answer is nmt-translate's line for that sentence
        assert level["requests"] > 0 and level["errors"] == 0 and level["mismatches"] == 0
        assert level["ratio_to_nmt_translate"] == round(
            level["sentences_per_second"] / level["nmt_translate_sentences_per_second"], 3
        )
