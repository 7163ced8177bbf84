"""Data pipeline benchmark at scale: preparation speed, batch planning time, memory, cache size.

    python scripts/bench_data.py --pairs 30000 3000000 --num-proc 2
For each --pairs N it writes a synthetic corpus of N pairs to a temporary folder (Multi30k's
training lines from ../shared/data/multi30k, repeated with cheap perturbations: a word dropped,
two words swapped, a word repeated, a word taken from another line), then runs three phases,
each in a fresh process so that each peak RSS is its own:
    prepare   build the cache entry (normalize, Moses, BPE, ids) -> pairs/s, peak RSS of the
              main process and of its largest child process (the datasets workers with
              --num-proc > 1; a forked child's figure includes the pages it shares with its parent)
    startup   a second run with the same config: open the cache, build the model and optimizer
              (experiment=multi30k_ende), plan the first epoch and make its first batch
    epoch     open the cache, plan one epoch's batches and make every batch of it
and prints one JSON object: per N the figures of each phase and the cache size on disk; with
several N, how much each phase's peak RSS grew from the smallest N to the largest.
Trailing arguments are Hydra overrides of conf/train.yaml on top of experiment=multi30k_ende.
Nothing is written outside the temporary folder (--workdir to choose it, --keep to keep it).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STARTED = time.monotonic()  # before the heavy imports, which a start-up pays for
REPO = Path(__file__).resolve().parents[1]
MULTI30K = REPO.parent / "shared" / "data" / "multi30k"
PHASES = ("prepare", "startup", "epoch")


def perturbed(words: list[str], other: list[str], rng: random.Random) -> str:
    """One cheap change, so that repeated lines are new sentences to tokenize and encode."""
    words = list(words)
    if len(words) > 2:
        kind, at = rng.randrange(4), rng.randrange(len(words) - 1)
        if kind == 0:
            del words[at]
        elif kind == 1:
            words[at], words[at + 1] = words[at + 1], words[at]
        elif kind == 2:
            words.insert(at, words[at])
        elif other:
            words[at] = rng.choice(other)
    return " ".join(words)


def write_corpus(folder: Path, pairs: int, source: Path) -> None:
    """train.{en,de}.gz of `pairs` pairs from Multi30k's training lines; val.{en,de}.gz as Multi30k's."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = {
        lang: gzip.decompress((source / f"train.{lang}.gz").read_bytes()).decode().split("\n")[:-1]
        for lang in ("en", "de")
    }
    words = {lang: [line.split() for line in lines[lang]] for lang in lines}
    rng = random.Random(1)
    with (
        gzip.open(folder / "train.en.gz", "wt", encoding="utf-8", compresslevel=1) as en,
        gzip.open(folder / "train.de.gz", "wt", encoding="utf-8", compresslevel=1) as de,
    ):
        for index in range(pairs):
            line = index % len(lines["en"])
            if index < len(lines["en"]):
                en.write(lines["en"][line] + "\n")
                de.write(lines["de"][line] + "\n")
                continue
            other = rng.randrange(len(lines["en"]))
            en.write(perturbed(words["en"][line], words["en"][other], rng) + "\n")
            de.write(perturbed(words["de"][line], words["de"][other], rng) + "\n")
    for lang in ("en", "de"):
        shutil.copy(source / f"val.{lang}.gz", folder / f"val.{lang}.gz")


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # kilobytes on Linux


def current_rss_mb() -> dict[str, float]:
    """Resident memory now, anonymous (heap) and file-backed (mapped files) apart."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {f"{key.lower()}_mb": int(status[key].split()[0]) / 1024 for key in ("RssAnon", "RssFile") if key in status}


def run_phase(phase: str, corpus: Path, cache: Path, num_proc: int, overrides: list[str]) -> dict:
    """One phase in this process -> its figures."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from nmt.batching import epoch_batches, make_batch
    from nmt.cache import prepare
    from nmt.config import Config, register_configs

    register_configs()
    settings = [f"data.dir={corpus}", f"data.cache_dir={cache}", f"data.num_proc={num_proc}", *overrides]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg: Config = OmegaConf.to_object(compose("train", ["experiment=multi30k_ende", *settings]))
    start = time.monotonic()
    data = prepare(cfg.data)
    result: dict = {"built": data.built, "pairs": data.pairs, "prepare_seconds": time.monotonic() - start}
    if phase == "prepare":
        result["pairs_per_second"] = data.pairs / result["prepare_seconds"]
        result["peak_rss_children_mb"] = peak_rss_mb(resource.RUSAGE_CHILDREN)
    elif phase == "startup":
        import torch

        from nmt.model import Seq2Seq
        from nmt.run_folder import RunFolder
        from nmt.trainer import Trainer

        model = Seq2Seq(cfg.model, data.src_pipeline.vocab_size, data.tgt_pipeline.vocab_size)
        Trainer(model, data, cfg, RunFolder(cache / "run", cfg.train, lead=False))
        plan = epoch_batches(data.train, cfg.train.batch_tokens, cfg.train.seed, 1)
        make_batch(data.train, plan[0])
        result["startup_seconds"] = time.monotonic() - STARTED  # imports included, as a training run pays them
        result["torch_threads"] = torch.get_num_threads()
    else:
        start = time.monotonic()
        plan = epoch_batches(data.train, cfg.train.batch_tokens, cfg.train.seed, 1)
        result["plan_seconds"] = time.monotonic() - start
        start, tokens, padded = time.monotonic(), 0, 0
        for indices in plan:
            batch = make_batch(data.train, indices)
            tokens, padded = tokens + batch.target_tokens, padded + batch.tgt_out.numel()
        result.update(
            batches=len(plan),
            batching_seconds=time.monotonic() - start,
            training_pairs=len(data.train),
            tgt_padding_fraction=1 - tokens / max(padded, 1),
        )
    return {**result, "peak_rss_mb": peak_rss_mb(), **current_rss_mb()}


def bench(pairs: int, workdir: Path, num_proc: int, overrides: list[str]) -> dict:
    corpus, cache = workdir / f"corpus-{pairs}", workdir / f"cache-{pairs}"
    start = time.monotonic()
    write_corpus(corpus, pairs, MULTI30K)
    result: dict = {"pairs": pairs, "corpus_seconds": time.monotonic() - start}
    for phase in PHASES:
        command = [sys.executable, __file__, "--phase", phase, "--corpus", str(corpus), "--cache", str(cache)]
        command += ["--num-proc", str(num_proc), *overrides]
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        if done.returncode:
            sys.exit(f"phase {phase} failed:\n{done.stderr[-3000:]}")
        result[phase] = json.loads(done.stdout.strip().splitlines()[-1])
    result["cache_mb"] = sum(path.stat().st_size for path in cache.rglob("*") if path.is_file()) / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[30_000])
    parser.add_argument("--num-proc", type=int, default=0, help="data.num_proc (0: one per CPU core)")
    parser.add_argument("--workdir", type=Path, help="where corpora and caches go (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the corpora and caches")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args()
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.corpus, args.cache, args.num_proc, overrides)))
        return
    if not (MULTI30K / "train.en.gz").exists():
        sys.exit(f"Multi30k not found at {MULTI30K}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nmt-bench-data-"))
    try:
        runs = [bench(pairs, workdir, args.num_proc, overrides) for pairs in sorted(args.pairs)]
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report: dict = {"runs": runs, "num_proc": args.num_proc, "overrides": overrides}
    if len(runs) > 1:
        smallest, largest = runs[0], runs[-1]
        report["peak_rss_growth_mb"] = {
            phase: largest[phase]["peak_rss_mb"] - smallest[phase]["peak_rss_mb"] for phase in PHASES
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
