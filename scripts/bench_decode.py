"""Decoding benchmark: Multi30k test_2016_flickr (1,000 sentences) with beam 1 and 5 in fp32, bf16, int8.

    python scripts/bench_decode.py runs/ende/checkpoints/best.pt [--data-dir ../shared/data/multi30k]
Prints one JSON object per setting: sentences/s, target tokens/s, peak RSS and BLEU of the batched
search, and the same sentences through a naive per-sentence beam search in the same process (the
baseline) with the speed-up ratio; then one object for the whole `nmt-translate` process (start-up
included) at beam 5 fp32. Each setting runs in a fresh process, so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nmt import checkpoint, metrics
from nmt.config import DecodeConfig
from nmt.precision import autocast
from nmt.search import Hypothesis, SearchModel, length_penalty, max_lengths
from nmt.translator import Translator
from nmt.vocab import BOS, EOS

REPO = Path(__file__).resolve().parents[1]
SETTINGS = [(beam, precision) for beam in (1, 5) for precision in ("fp32", "bf16", "int8")]


def read_gz(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as file:
        return file.read().splitlines()


def test_files(args: argparse.Namespace) -> tuple[Path, Path]:
    """`{split}.{lang}.gz` for the checkpoint's source and target languages."""
    data_cfg = checkpoint.load(args.checkpoint)["data_config"]
    return tuple(args.data_dir / f"{args.split}.{data_cfg[side]}.gz" for side in ("src_lang", "tgt_lang"))


@torch.no_grad()
def naive_beam_search(model: SearchModel, ids: list[int], cfg: DecodeConfig) -> Hypothesis:
    """The textbook version, one sentence at a time: the same hypotheses as `beam_search`
    (top 2K candidates, EOS in the first K finishes, K finished or the length limit ends it),
    with the candidates of each step chosen in Python."""
    K = cfg.beam_size
    source, state = model.encode(torch.tensor([ids]), torch.tensor([len(ids)]))
    limit = int(max_lengths(torch.tensor([len(ids)]), cfg.max_length_ratio, cfg.max_length_offset))
    beams: list[tuple[list[int], float]] = [([], 0.0)]
    finished: list[Hypothesis] = []
    for t in range(limit + 1):
        prev = torch.tensor([tokens[-1] if tokens else BOS for tokens, _ in beams])
        log_probs, state, _ = model.step(prev, state, source)  # every beam attends to the one source
        if t == limit:
            log_probs = torch.where(torch.arange(log_probs.size(1)) == EOS, log_probs, float("-inf"))
        values, tokens = log_probs.topk(min(2 * K, log_probs.size(1)), dim=1)
        candidates = [
            (score + value, beam, token)
            for beam, (_, score) in enumerate(beams)
            for value, token in zip(values[beam].tolist(), tokens[beam].tolist())
        ]
        candidates.sort(key=lambda candidate: -candidate[0])
        survivors = []
        for rank, (score, beam, token) in enumerate(candidates[: 2 * K]):
            if token == EOS:
                if rank < K and score > float("-inf"):
                    finished.append(
                        Hypothesis(beams[beam][0], score / length_penalty(t + 1, cfg.length_penalty), score)
                    )
            elif len(survivors) < K:
                survivors.append((score, beam, token))
        if len(finished) >= K or t == limit or not survivors:
            break
        state = state.index_select(torch.tensor([beam for _, beam, _ in survivors]))
        beams = [(beams[beam][0] + [token], score) for score, beam, token in survivors]
    return max(finished, key=lambda hypothesis: hypothesis.score)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_setting(args: argparse.Namespace, beam: int, precision: str) -> dict:
    """One setting in this process: batched search over the test set, then the naive baseline."""
    if args.threads:
        torch.set_num_threads(args.threads)
    source_file, reference_file = test_files(args)
    sources, references = read_gz(source_file), read_gz(reference_file)
    cfg = DecodeConfig(
        beam_size=beam,
        batch_tokens=args.batch_tokens,
        precision="bf16" if precision == "bf16" else "fp32",
        quantize="int8" if precision == "int8" else "none",
    )
    translator = Translator.from_checkpoints([args.checkpoint], cfg)
    translator.translate(sources[:20])  # warm-up: first-call allocations and kernel choices
    start = time.perf_counter()
    results = translator.translate(sources)
    seconds = time.perf_counter() - start
    rss = peak_rss_mb()
    hypotheses = [hyps[0] for hyps in results]
    target_tokens = sum(len(hyp.tokens) for hyp in hypotheses)
    bleu, signature = metrics.bleu([hyp.text for hyp in hypotheses], references)

    subset = range(min(args.baseline_sentences, len(sources)))
    src_ids = translator.src_pipeline.encode([sources[i] for i in subset])
    with autocast(cfg.precision, translator.device):
        start = time.perf_counter()
        naive = [naive_beam_search(translator.model, ids, cfg) for ids in src_ids]
        naive_seconds = time.perf_counter() - start
    same = np.mean([a.tokens == hypotheses[i].tokens for i, a in zip(subset, naive)])
    return {
        "setting": f"beam{beam}-{precision}",
        "sentences": len(sources),
        "seconds": round(seconds, 3),
        "sentences_per_second": round(len(sources) / seconds, 1),
        "target_tokens_per_second": round(target_tokens / seconds, 1),
        "peak_rss_mb": round(rss, 1),
        "bleu": round(bleu, 2),
        "baseline_sentences": len(subset),
        "baseline_sentences_per_second": round(len(subset) / naive_seconds, 1),
        "speedup_over_baseline": round((len(sources) / seconds) / (len(subset) / naive_seconds), 2),
        "baseline_same_output": round(float(same), 4),
        "threads": torch.get_num_threads(),
        "signature": signature,
    }


def run_cli(args: argparse.Namespace) -> dict:
    """The whole `nmt-translate` process at beam 5 fp32, start-up and model loading included."""
    source_file, reference_file = test_files(args)
    references = read_gz(reference_file)
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "hypotheses.txt"
        command = [sys.executable, "-m", "nmt.translate", "-m", str(args.checkpoint), "--quiet"]
        command += ["-i", str(source_file), "-o", str(output), "--beam-size", "5"]
        command += ["--threads", str(args.threads)] if args.threads else []
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=REPO)
        seconds = time.perf_counter() - start
        hypotheses = output.read_text(encoding="utf-8").splitlines()
    return {
        "setting": "nmt-translate process, beam5-fp32",
        "sentences": len(hypotheses),
        "seconds": round(seconds, 3),
        "bleu": round(metrics.bleu(hypotheses, references)[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "multi30k")
    parser.add_argument("--split", default="test_2016_flickr")
    parser.add_argument("--batch-tokens", type=int, default=DecodeConfig().batch_tokens)
    parser.add_argument("--baseline-sentences", type=int, default=1000, help="sentences the naive baseline decodes")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--settings", default=",".join(f"{b}-{p}" for b, p in SETTINGS), help="e.g. 5-fp32,5-int8")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # a child process runs one setting
    args = parser.parse_args()
    if args.one:
        beam, precision = args.one.split("-")
        print(json.dumps(run_setting(args, int(beam), precision)))
        return
    fp32_bleu: dict[str, float] = {}
    for setting in args.settings.split(","):
        command = [sys.executable, __file__, str(args.checkpoint), "--data-dir", str(args.data_dir)]
        command += ["--split", args.split, "--batch-tokens", str(args.batch_tokens), "--threads", str(args.threads)]
        command += ["--baseline-sentences", str(args.baseline_sentences), "--one", setting]
        child = subprocess.run(command, check=True, capture_output=True, text=True)
        result = json.loads(child.stdout.splitlines()[-1])
        beam = setting.split("-")[0]
        if setting.endswith("fp32"):
            fp32_bleu[beam] = result["bleu"]
        if beam in fp32_bleu:
            result["bleu_change_vs_fp32"] = round(result["bleu"] - fp32_bleu[beam], 2)
        print(json.dumps(result), flush=True)
    print(json.dumps(run_cli(args)), flush=True)


if __name__ == "__main__":
    main()
