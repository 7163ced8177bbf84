"""`nmt-translate`: translate raw sentences, one per line, with a trained checkpoint.

    nmt-translate -m runs/ende/checkpoints/best.pt -i test.en -o test.de --beam-size 5
Without -i/-o (or with -) it reads stdin and writes stdout. With --nbest K > 1 each input line
gives K lines "LINE_NUMBER ||| translation ||| score" (Moses n-best format, 0-based lines).
Input is read and translated in chunks of --chunk-lines lines (sorted by length within a chunk,
written back in input order), so memory stays bounded however long the input; progress goes
to stderr and stdout holds exactly the translations. Several -m average the models' log-probs.
With --alignments each translation is followed by a tab and its hard alignment, "i-j" pairs of
0-based source and target subword positions (with --nbest K > 1, a fourth field "||| i-j ...");
--attention-dir DIR writes the best translation's attention heatmap per input line to
DIR/000001.png, DIR/000002.png, ... (1-based line numbers; none for a blank line).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import torch

from nmt import checkpoint
from nmt.alignment import AttentionMap, attention_maps, format_alignment
from nmt.config import DecodeConfig
from nmt.ensemble import Ensemble, check_compatible
from nmt.errors import NmtError, exit_on_user_error
from nmt.search import Constraints, Sampling
from nmt.translator import SearchOptions, Translation, Translator, quantize_int8

DEFAULTS = DecodeConfig()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nmt-translate", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-m", "--model", required=True, type=Path, action="append", help="checkpoint file (.pt); repeat to ensemble"
    )
    parser.add_argument("-i", "--input", default="-", help="raw source text, one sentence per line (- = stdin)")
    parser.add_argument("-o", "--output", default="-", help="where translations go (- = stdout)")
    parser.add_argument("--beam-size", type=int, default=DEFAULTS.beam_size, help="1 = greedy search")
    parser.add_argument("--nbest", type=int, default=DEFAULTS.nbest, help="hypotheses printed per sentence")
    parser.add_argument(
        "--batch-tokens", type=int, default=DEFAULTS.batch_tokens, help="padded source tokens x beam size per batch"
    )
    parser.add_argument("--max-length-ratio", type=float, default=DEFAULTS.max_length_ratio)
    parser.add_argument("--max-length-offset", type=int, default=DEFAULTS.max_length_offset)
    parser.add_argument("--min-length", type=int, default=0, help="target subwords before EOS is allowed")
    parser.add_argument("--length-penalty", type=float, default=DEFAULTS.length_penalty, help="GNMT alpha")
    parser.add_argument("--coverage-penalty", type=float, default=0.0, help="GNMT beta (0 = off)")
    parser.add_argument("--no-repeat-ngram", type=int, default=0, help="N > 0: no N-gram of subwords twice")
    parser.add_argument("--replace-unk", action="store_true", help="copy the most attended source word for UNK")
    parser.add_argument(
        "--sampling", default="", metavar="topk:K|topp:P", help="sample instead of search (back-translation)"
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="of --sampling")
    parser.add_argument("--seed", type=int, default=0, help="of --sampling")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--quantize", choices=("none", "int8"), default="none", help="int8: dynamic, CPU only")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--chunk-lines", type=int, default=10000, help="lines read and translated at a time")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument(
        "--alignments", action="store_true", help="append each translation's hard alignment (i-j subword pairs)"
    )
    parser.add_argument(
        "--attention-dir", type=Path, metavar="DIR", help="write an attention heatmap PNG per input line to DIR"
    )
    return parser.parse_args(argv)


def parse_sampling(spec: str, temperature: float) -> Sampling | None:
    """'topk:K' or 'topp:P' -> Sampling; '' -> None."""
    if not spec:
        return None
    kind, _, value = spec.partition(":")
    try:
        if kind == "topk" and int(value) >= 1 and temperature > 0:
            return Sampling(top_k=int(value), temperature=temperature)
        if kind == "topp" and 0 < float(value) <= 1 and temperature > 0:
            return Sampling(top_p=float(value), temperature=temperature)
    except ValueError:
        pass
    raise NmtError(f"--sampling {spec} --temperature {temperature}: expected topk:K (K >= 1) or topp:P (0 < P <= 1)")


def open_input(name: str) -> contextlib.AbstractContextManager[IO[bytes]]:
    if name == "-":
        return contextlib.nullcontext(sys.stdin.buffer)
    path = Path(name)
    try:
        return gzip.open(path) if path.suffix == ".gz" else path.open("rb")
    except FileNotFoundError:
        raise NmtError(f"{path}: file not found") from None
    except OSError as error:
        raise NmtError(f"{path}: cannot read ({error})") from None


def open_output(name: str) -> contextlib.AbstractContextManager[IO[str]]:
    if name == "-":
        return contextlib.nullcontext(sys.stdout)
    try:
        return Path(name).open("w", encoding="utf-8")
    except OSError as error:
        raise NmtError(f"{name}: cannot write ({error})") from None


def read_chunks(file: IO[bytes], label: str, size: int) -> Iterator[list[str]]:
    """Lines of a UTF-8 stream, split on "\\n" only, `size` at a time."""
    chunk: list[str] = []
    for number, raw in enumerate(file, start=1):
        try:
            chunk.append(raw.decode("utf-8").removesuffix("\n").removesuffix("\r"))
        except UnicodeDecodeError as error:
            raise NmtError(f"{label}:{number}: invalid UTF-8 at byte {error.start}; convert it to UTF-8") from None
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def format_output(
    results: list[list[Translation]],
    nbest: int,
    first_line: int = 0,
    alignments: list[list[AttentionMap | None]] | None = None,
) -> str:
    """The lines for stdout; with `alignments` (a map or None per hypothesis) each gets its alignment."""

    def alignment(number: int, rank: int) -> str:
        found = alignments[number][rank] if alignments is not None else None
        return format_alignment(found.alignment()) if found is not None else ""

    if nbest == 1:
        if alignments is None:
            return "".join(f"{hyps[0].text}\n" for hyps in results)
        return "".join(f"{hyps[0].text}\t{alignment(k, 0)}\n" for k, hyps in enumerate(results))
    return "".join(
        f"{first_line + k} ||| {hyp.text} ||| {hyp.score:.4f}"
        + (f" ||| {alignment(k, rank)}\n" if alignments is not None else "\n")
        for k, hyps in enumerate(results)
        for rank, hyp in enumerate(hyps)
    )


def attention_of(
    translator: Translator, lines: list[str], results: list[list[Translation]], ranks: int
) -> list[list[AttentionMap | None]]:
    """The attention maps of each line's first `ranks` translations (None for a blank line)."""
    pairs = [(k, rank) for k, hyps in enumerate(results) for rank in range(min(ranks, len(hyps)))]
    with translator.autocast():
        maps = attention_maps(
            translator.model, translator.src_pipeline, translator.tgt_pipeline,
            [lines[k] for k, _ in pairs], [results[k][rank].tokens for k, rank in pairs], translator.cfg.batch_tokens,
        )  # fmt: skip
    out: list[list[AttentionMap | None]] = [[] for _ in results]
    for (k, _), found in zip(pairs, maps):
        out[k].append(found)
    return out


def write_heatmaps(folder: Path, maps: list[list[AttentionMap | None]], first_line: int) -> None:
    """DIR/000001.png ... for the best translation of each non-blank line (1-based numbers)."""
    from nmt.plot import attention_figure  # matplotlib only when heatmaps are asked for

    for number, found in enumerate((line_maps[0] for line_maps in maps), start=first_line + 1):
        if found is not None:
            figure = attention_figure(found.weights, found.src_pieces, found.tgt_pieces, title=f"line {number}")
            try:
                figure.savefig(folder / f"{number:06d}.png")
            except OSError as error:
                raise NmtError(f"{folder}: cannot write heatmaps ({error})") from None


def load_translator(args: argparse.Namespace) -> Translator:
    cfg = DecodeConfig(
        beam_size=args.beam_size,
        nbest=args.nbest,
        batch_tokens=args.batch_tokens,
        max_length_ratio=args.max_length_ratio,
        max_length_offset=args.max_length_offset,
        length_penalty=args.length_penalty,
    )
    sampling = parse_sampling(args.sampling, args.temperature)
    if sampling is not None and args.nbest > 1:
        raise NmtError("--sampling draws one translation per line; use --nbest 1")
    if args.min_length < 0 or args.no_repeat_ngram < 0 or args.coverage_penalty < 0 or args.chunk_lines < 1:
        raise NmtError("--min-length, --no-repeat-ngram and --coverage-penalty must be >= 0, --chunk-lines >= 1")
    if args.quantize == "int8" and args.device != "cpu":
        raise NmtError("--quantize int8 runs on the CPU only; drop --device or --quantize")
    checkpoints = [checkpoint.load(path) for path in args.model]
    check_compatible(checkpoints, args.model)
    restored = [checkpoint.restore(ckpt, path) for ckpt, path in zip(checkpoints, args.model)]
    models = [model for model, _, _, _ in restored]
    _, src, tgt, _ = restored[0]  # the same for all, as checked
    model = models[0] if len(models) == 1 else Ensemble(models)
    if args.quantize == "int8":
        model = quantize_int8(model)
    options = SearchOptions(
        Constraints(args.min_length, args.no_repeat_ngram, args.coverage_penalty),
        sampling,
        args.seed,
        args.replace_unk,
    )
    return Translator(model.to(args.device), src, tgt, cfg, precision=args.precision, options=options)


def translate(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    label = "<stdin>" if args.input == "-" else args.input
    if args.attention_dir:
        try:
            args.attention_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise NmtError(f"{args.attention_dir}: cannot create the --attention-dir folder ({error})") from None
    with open_input(args.input) as source:  # a missing input fails before the model loads
        translator = load_translator(args)
        with open_output(args.output) as output:
            start, done = time.monotonic(), 0
            for lines in read_chunks(source, label, args.chunk_lines):
                results = translator.translate(lines)
                maps = None
                if args.alignments or args.attention_dir:
                    maps = attention_of(translator, lines, results, args.nbest if args.alignments else 1)
                if args.attention_dir:
                    write_heatmaps(args.attention_dir, maps, first_line=done)
                output.write(format_output(results, args.nbest, done, maps if args.alignments else None))
                output.flush()
                done += len(lines)
                if not args.quiet:
                    rate = done / (time.monotonic() - start)
                    print(f"nmt-translate: {done} lines, {rate:.1f} sentences/s", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        exit_on_user_error(lambda: translate(args))
    except BrokenPipeError:
        # the reader of stdout went away (`| head`): stop quietly as Unix tools do, and keep
        # Python from failing again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
