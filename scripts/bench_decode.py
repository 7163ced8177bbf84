"""Decoding benchmark: the speed/quality frontier of beam 1 and 5 in fp32, bf16 and int8, with and
without the lexical shortlist, on Multi30k test_2016_flickr (1,000 sentences) or another split.

    python scripts/bench_decode.py runs/ende/checkpoints/best.pt --plot frontier.png
    python scripts/bench_decode.py runs/ende/checkpoints/best.pt --split val --grid 10,20,50:100,500,1000
    python scripts/bench_decode.py best.pt --peer-venv /tmp/onmt-venv --peer-work runs/peer_opennmt
Prints one JSON object per setting: sentences/s, target tokens/s, peak RSS, BLEU (and its change
against the same beam in fp32 without the shortlist), the seconds taking the model from its file
to a Translator, and with the shortlist the mean target pieces of a batch's shortlist. Each setting
runs in a fresh process, so its peak RSS is its own. Then, unless --no-process: the start-up costs
(interpreter, `import nmt.translate`) and the whole `nmt-translate` process on the split at the
fastest setting of each beam, start-up included. With --peer-venv, OpenNMT-py's `onmt_translate` translates the
same split at beam 1 and 5 in the same sitting, from the last checkpoint that
scripts/bench_peer_opennmt.py trained in --peer-work (test_2016_flickr only: that is the split it
exported). --plot draws BLEU against sentences/s. --grid K,K:N,N instead scores beam 5 fp32 with
every shortlist of K candidates per source piece and N frequent pieces, for choosing the defaults
on val: BLEU, and the shortlist's size for batches of 1 to 300 sentences and for the batches that
decoding makes. --baseline-sentences S also decodes S sentences with a naive per-sentence beam
search in the same process, for the speed-up of the batched search. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
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
from nmt.search import Columns, Hypothesis, SearchModel, length_penalty, max_lengths
from nmt.shortlist import Shortlist
from nmt.translator import Translator
from nmt.vocab import BOS, EOS, pad

REPO = Path(__file__).resolve().parents[1]
SETTINGS = [
    f"{beam}-{precision}{suffix}" for beam in (1, 5) for precision in ("fp32", "bf16", "int8") for suffix in ("", "-sl")
]
GROUPS = (1, 10, 30, 100, 300)  # sentences a batch, for the shortlist sizes of --grid


def read_gz(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as file:
        return file.read().splitlines()


def split_files(args: argparse.Namespace) -> tuple[Path, Path]:
    """`{split}.{lang}.gz` for the checkpoint's source and target languages."""
    data_cfg = checkpoint.load(args.checkpoint)["data_config"]
    return tuple(args.data_dir / f"{args.split}.{data_cfg[side]}.gz" for side in ("src_lang", "tgt_lang"))


def decode_config(setting: str, args: argparse.Namespace, **sizes: int) -> DecodeConfig:
    """ "5-int8-sl": beam 5, int8, with the shortlist (`sizes`: its shortlist_* keys, else the defaults)."""
    beam, precision, *rest = setting.split("-")
    return DecodeConfig(
        beam_size=int(beam),
        batch_tokens=args.batch_tokens,
        precision="bf16" if precision == "bf16" else "fp32",
        quantize="int8" if precision == "int8" else "none",
        shortlist=rest == ["sl"],
        streams=args.streams,
        **sizes,
    )


@torch.no_grad()
def naive_beam_search(model: SearchModel, ids: list[int], cfg: DecodeConfig) -> Hypothesis:
    """The textbook version, one sentence at a time: the same hypotheses as `beam_search`
    (top 2K candidates, EOS in the first K finishes, K finished or the length limit ends it),
    with the candidates of each step chosen in Python."""
    K = cfg.beam_size
    source, state = model.encode(torch.tensor([ids]), torch.tensor([len(ids)]))
    columns = Columns(model.vocabulary(source))
    limit = int(max_lengths(torch.tensor([len(ids)]), cfg.max_length_ratio, cfg.max_length_offset))
    beams: list[tuple[list[int], float]] = [([], 0.0)]
    finished: list[Hypothesis] = []
    for t in range(limit + 1):
        prev = torch.tensor([tokens[-1] if tokens else BOS for tokens, _ in beams])
        log_probs, state, _ = model.step(prev, state, source)  # every beam attends to the one source
        if t == limit:
            log_probs = torch.where(torch.arange(log_probs.size(1)) == columns.eos, log_probs, float("-inf"))
        values, best = log_probs.topk(min(2 * K, log_probs.size(1)), dim=1)
        tokens = columns.tokens(best)
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


def recording_sizes(translator: Translator) -> list[int]:
    """Record the size of each batch's shortlist as the translator's models ask for it."""
    sizes: list[int] = []
    table = translator.model.shortlist  # the one Shortlist of a single model
    vocabulary = table.vocabulary

    def recorded(src: torch.Tensor) -> torch.Tensor:
        ids = vocabulary(src)
        sizes.append(len(ids))
        return ids

    table.vocabulary = recorded
    return sizes


def run_setting(args: argparse.Namespace, setting: str) -> dict:
    """One setting in this process: load, warm up, translate the split, score."""
    if args.threads:
        torch.set_num_threads(args.threads)
    source_file, reference_file = split_files(args)
    sources, references = read_gz(source_file), read_gz(reference_file)
    cfg = decode_config(setting, args)
    start = time.perf_counter()
    translator = Translator.from_checkpoints([args.checkpoint], cfg)
    load_seconds = time.perf_counter() - start
    translator.translate(sources[:20])  # warm-up: first-call allocations and kernel choices
    sizes = recording_sizes(translator) if cfg.shortlist else []
    start = time.perf_counter()
    results = translator.translate(sources)
    seconds = time.perf_counter() - start
    rss = peak_rss_mb()
    hypotheses = [hyps[0] for hyps in results]
    bleu, signature = metrics.bleu([hyp.text for hyp in hypotheses], references)
    report = {
        "setting": setting,
        "beam": cfg.beam_size,
        "precision": setting.split("-")[1],
        "shortlist": cfg.shortlist,
        "sentences": len(sources),
        "seconds": round(seconds, 3),
        "sentences_per_second": round(len(sources) / seconds, 1),
        "target_tokens_per_second": round(sum(len(hyp.tokens) for hyp in hypotheses) / seconds, 1),
        "peak_rss_mb": round(rss, 1),
        "bleu": round(bleu, 2),
        "load_seconds": round(load_seconds, 3),
        "threads": torch.get_num_threads(),  # per stream
        "streams": cfg.streams,
        "signature": signature,
    }
    if cfg.shortlist:
        report |= {"shortlist_k_n": [cfg.shortlist_per_source, cfg.shortlist_frequent]}
        report |= {"mean_shortlist_size": round(float(np.mean(sizes)), 1)}
    if args.baseline_sentences:
        report |= naive_baseline(translator, sources[: args.baseline_sentences], hypotheses, cfg)
        report["speedup_over_baseline"] = round(report["sentences_per_second"] / report["baseline_sentences_per_s"], 2)
    return report


def naive_baseline(translator: Translator, sources: list[str], batched: list, cfg: DecodeConfig) -> dict:
    src_ids = translator.src_pipeline.encode(sources)
    with autocast(cfg.precision, translator.device):
        start = time.perf_counter()
        naive = [naive_beam_search(translator.model, ids, cfg) for ids in src_ids]
        seconds = time.perf_counter() - start
    return {
        "baseline_sentences": len(sources),
        "baseline_sentences_per_s": round(len(sources) / seconds, 1),
        "baseline_same_output": round(float(np.mean([a.tokens == b.tokens for a, b in zip(naive, batched)])), 4),
    }


def run_grid(args: argparse.Namespace) -> None:
    """BLEU of beam 5 fp32 with each shortlist of --grid, and without, in this process (BLEU is not
    a timing); the shortlist's sizes for batches of GROUPS sentences and as decoding batches."""
    if args.threads:
        torch.set_num_threads(args.threads)
    per_source, frequent = ([int(x) for x in part.split(",")] for part in args.grid.split(":"))
    source_file, reference_file = split_files(args)
    sources, references = read_gz(source_file), read_gz(reference_file)
    table = checkpoint.load(args.checkpoint).get("shortlist")
    full_bleu = None
    for k, n in [(0, 0)] + [(k, n) for k in per_source for n in frequent]:
        sizes = {"shortlist_per_source": k, "shortlist_frequent": n} if k else {}
        translator = Translator.from_checkpoints(
            [args.checkpoint], decode_config("5-fp32-sl" if k else "5-fp32", args, **sizes)
        )
        decoding = recording_sizes(translator) if k else []
        bleu, signature = metrics.bleu([hyps[0].text for hyps in translator.translate(sources)], references)
        full_bleu = bleu if full_bleu is None else full_bleu
        report = {"split": args.split, "beam": 5, "shortlist_k_n": [k, n] if k else None, "bleu": round(bleu, 2)}
        report["bleu_change"] = round(bleu - full_bleu, 2)
        if k:
            cut, ids = Shortlist(table, k, n, torch.device("cpu")), translator.src_pipeline.encode(sources)
            for group in GROUPS:
                batches = [pad(ids[i : i + group]) for i in range(0, len(ids) - group + 1, group)]
                report[f"size_{group}_sentences"] = round(float(np.mean([len(cut.vocabulary(b)) for b in batches])), 1)
            report |= {"size_decoding_batches": round(float(np.mean(decoding)), 1), "decoding_batches": len(decoding)}
        print(json.dumps({**report, "signature": signature}), flush=True)


def run_child(args: argparse.Namespace, setting: str) -> dict:
    command = [sys.executable, __file__, str(args.checkpoint), "--data-dir", str(args.data_dir), "--split", args.split]
    command += [
        "--batch-tokens",
        str(args.batch_tokens),
        "--threads",
        str(args.threads),
        "--streams",
        str(args.streams),
    ]
    command += ["--baseline-sentences", str(args.baseline_sentences), "--one", setting]
    child = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(child.stdout.splitlines()[-1])


def startup(args: argparse.Namespace) -> dict:
    """Seconds of a bare interpreter, and of `import nmt.translate` in a fresh one (best of 3)."""
    code = "import time; t = time.perf_counter(); import nmt.translate; print(time.perf_counter() - t)"
    bare, imports = [], []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append(time.perf_counter() - start)
        imports.append(float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                            text=True, cwd=REPO).stdout))  # fmt: skip
    return {"interpreter_seconds": round(min(bare), 3), "import_nmt_translate_seconds": round(min(imports), 3)}


def run_process(args: argparse.Namespace, setting: str) -> dict:
    """The whole `nmt-translate` process at one setting, start-up and model loading included."""
    source_file, reference_file = split_files(args)
    cfg = decode_config(setting, args)
    flags = ["--beam-size", str(cfg.beam_size), "--batch-tokens", str(cfg.batch_tokens)]
    flags += ["--precision", cfg.precision, "--quantize", cfg.quantize] + (["--shortlist"] if cfg.shortlist else [])
    flags += ["--threads", str(args.threads)] if args.threads else []
    flags += ["--streams", str(args.streams)]
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "hypotheses.txt"
        command = [sys.executable, "-m", "nmt.translate", "-m", str(args.checkpoint), "--quiet"]
        command += ["-i", str(source_file), "-o", str(output), *flags]
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        if status:
            raise SystemExit(f"{' '.join(command)} failed")
        hypotheses = output.read_text(encoding="utf-8").splitlines()
    return {
        "setting": f"nmt-translate process, {setting}",
        "command": " ".join(["nmt-translate", *command[3:]]),
        "sentences": len(hypotheses),
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "bleu": round(metrics.bleu(hypotheses, read_gz(reference_file))[0], 2),
    }


def run_peer(args: argparse.Namespace, beams: list[int]) -> list[dict]:
    """OpenNMT-py's onmt_translate on the test split, as scripts/bench_peer_opennmt.py runs it, at
    batches of as many source tokens as nmt-translate's at the same beam."""
    sys.path.insert(0, str(Path(__file__).parent))
    import bench_peer_opennmt  # hydra and the data pipeline: only for the peer

    _, reference_file = split_files(args)
    _, tgt_pipeline = checkpoint.pipelines(checkpoint.load(args.checkpoint))
    reports = []
    for beam in beams:
        batch = ["-batch_type", "tokens", "-batch_size", str(args.batch_tokens // beam)]
        result = bench_peer_opennmt.translate(
            args.peer_venv, args.peer_work, batch, read_gz(reference_file), tgt_pipeline, beam
        )
        reports.append({"setting": f"{beam}-opennmt-py", "beam": beam, "precision": "fp32", "shortlist": False,
                        "sentences_per_second": round(result["sentences_per_s"], 1), **result})  # fmt: skip
    return reports


def plot_frontier(reports: list[dict], path: Path) -> None:
    """BLEU against sentences/s, one point per setting: beam 1 circles, beam 5 squares (others
    diamonds), hollow without the shortlist, OpenNMT-py as stars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from nmt.files import atomic_output

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colors = {"fp32": "tab:blue", "bf16": "tab:orange", "int8": "tab:green"}
    for report in reports:
        peer = "opennmt" in report["setting"]
        marker = "*" if peer else {1: "o", 5: "s"}.get(report["beam"], "D")
        color = "black" if peer else colors[report["precision"]]
        filled = peer or report["shortlist"]
        axes.scatter(report["sentences_per_second"], report["bleu"], marker=marker, s=70 if not peer else 140,
                     facecolors=color if filled else "none", edgecolors=color)  # fmt: skip
        axes.annotate(report["setting"], (report["sentences_per_second"], report["bleu"]), fontsize=7,
                      xytext=(4, 3), textcoords="offset points")  # fmt: skip
    axes.set_xscale("log")
    axes.margins(x=0.15)  # room for the labels
    axes.set_xlabel("sentences/s (log scale)")
    axes.set_ylabel("BLEU")
    axes.set_title("beam 1 (circles) and 5 (squares); filled: with the shortlist; stars: OpenNMT-py", fontsize=9)
    axes.grid(True, alpha=0.3)
    with atomic_output(path, "wb", into_special_files=False) as file:
        figure.savefig(file, format="png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "multi30k")
    parser.add_argument("--split", default="test_2016_flickr", help="file prefix in --data-dir, e.g. val")
    parser.add_argument("--batch-tokens", type=int, default=DecodeConfig().batch_tokens)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="e.g. 5-fp32,5-int8-sl (-sl: the shortlist)")
    parser.add_argument("--streams", type=int, default=1, help="decode.streams of every setting")
    parser.add_argument("--no-process", action="store_true", help="skip the start-up and nmt-translate process")
    parser.add_argument("--plot", type=Path, help="write the frontier (BLEU against sentences/s) as a PNG here")
    parser.add_argument("--peer-venv", type=Path, help="OpenNMT-py's venv (scripts/bench_peer_opennmt.py makes it)")
    parser.add_argument("--peer-work", type=Path, default=Path("runs/peer_opennmt"), help="its trained model")
    parser.add_argument("--grid", default="", help="K,K:N,N: beam 5 fp32 BLEU of each shortlist, e.g. on val")
    parser.add_argument("--baseline-sentences", type=int, default=0, help="also a naive search of this many")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # a child process runs one setting
    args = parser.parse_args()
    if args.peer_venv and args.split != "test_2016_flickr":
        parser.error("--peer-venv: the peer's exported test set is test_2016_flickr; leave --split at it")
    if args.one:
        print(json.dumps(run_setting(args, args.one)))
        return
    if args.grid:
        run_grid(args)
        return
    reports: list[dict] = []
    for setting in args.settings.split(","):
        report = run_child(args, setting)
        plain = [r["bleu"] for r in reports if r["beam"] == report["beam"] and r["setting"].endswith("fp32")]
        if plain:
            report["bleu_change_vs_fp32"] = round(report["bleu"] - plain[0], 2)
        reports.append(report)
        print(json.dumps(report), flush=True)
    if args.peer_venv:
        for report in run_peer(args, sorted({r["beam"] for r in reports})):
            reports.append(report)
            print(json.dumps(report), flush=True)
    if not args.no_process:
        print(json.dumps(startup(args)), flush=True)
        ours = [r for r in reports if "opennmt" not in r["setting"]]
        for beam in sorted({r["beam"] for r in ours}):
            fastest = max((r for r in ours if r["beam"] == beam), key=lambda r: r["sentences_per_second"])
            print(json.dumps(run_process(args, fastest["setting"])), flush=True)
    if args.plot:
        plot_frontier(reports, args.plot)


if __name__ == "__main__":
    main()
