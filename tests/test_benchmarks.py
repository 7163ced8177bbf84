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


def test_bench_decode_prints_one_object_per_setting(trained_checkpoint, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    from nmt.synthetic import generate_split

    src, tgt = generate_split("test", 3000, 1234)
    (data_dir / "test.src.gz").write_bytes(gzip.compress(("\n".join(src[:30]) + "\n").encode()))
    (data_dir / "test.tgt.gz").write_bytes(gzip.compress(("\n".join(tgt[:30]) + "\n").encode()))
    reports = run_script(
        "scripts/bench_decode.py", str(trained_checkpoint), "--data-dir", str(data_dir), "--split", "test",
        "--baseline-sentences", "5", "--settings", "2-fp32,1-int8",
    )  # fmt: skip
    assert len(reports) >= 2
    for report in reports[:2]:
        assert report["sentences_per_second"] > 0 and "bleu" in report
