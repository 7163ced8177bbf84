"""`nmt-translate`: translate raw sentences, one per line, with trained checkpoints.

    nmt-translate -m runs/ende/checkpoints/best.pt -i test.en -o test.de --beam-size 5
Without -i/-o (or with -) it reads stdin and writes stdout. With --nbest K > 1 each input line
gives K lines "LINE_NUMBER ||| translation ||| score" (Moses n-best format, 0-based lines).
Input is read and translated in chunks of at most --chunk-lines lines (sorted by length within a
chunk, written back in input order), so memory stays bounded however long the input; a chunk
ends early when no more input is waiting, so a line typed at a terminal, or written by a program
that then waits for its answer, is translated and flushed at once. Progress goes to stderr and
stdout holds exactly the translations; an output file appears only once complete. Several -m
average the models' log-probs. With --alignments each translation is followed by a tab and its
hard alignment, "i-j" pairs of 0-based source and target subword positions (with --nbest K > 1,
a fourth field "||| i-j ..."); --attention-dir DIR writes the best translation's attention
heatmap per input line to DIR/000001.png, DIR/000002.png, ... (1-based line numbers; none for a
blank line). Every search and inference option is a field of nmt.config.DecodeConfig, which
nmt.evaluate takes as decode.* keys.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import sys
import time
from pathlib import Path
from typing import IO

from nmt.alignment import AttentionMap
from nmt.config import DecodeConfig, add_flags, from_flags
from nmt.errors import LineError, NmtError, exit_on_user_error
from nmt.files import atomic_output, check_distinct, open_input, read_chunks
from nmt.translator import Translator, format_translations


def parser() -> argparse.ArgumentParser:
    """nmt-translate's flags: its own, then one per DecodeConfig field (tests/test_docs.py parses the docs with it)."""
    parser = argparse.ArgumentParser(
        prog="nmt-translate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    own = parser.add_argument_group("input and output")
    own.add_argument(
        "-m", "--model", required=True, type=Path, action="append", help="checkpoint file (.pt); repeat to ensemble"
    )
    own.add_argument("-i", "--input", default="-", help="raw source text, one sentence per line (- = stdin)")
    own.add_argument("-o", "--output", default="-", help="where translations go (- = stdout)")
    own.add_argument("--chunk-lines", type=int, default=10000, help="at most this many lines translated at a time")
    own.add_argument("--max-line-chars", type=int, default=100_000, help="a longer input line is an error")
    own.add_argument("--quiet", action="store_true", help="no progress on stderr")
    own.add_argument("--alignments", action="store_true", help="append each translation's hard alignment (i-j pairs)")
    own.add_argument("--attention-dir", type=Path, metavar="DIR", help="write an attention heatmap PNG per line to DIR")
    own.add_argument("--max-heatmaps", type=int, default=1000, help="with --attention-dir: at most this many PNGs")
    add_flags(parser, DecodeConfig, "search and inference (nmt.config.DecodeConfig; decode.* in nmt.evaluate)")
    return parser


def write_heatmaps(folder: Path, maps: list[AttentionMap | None], first_line: int, limit: int) -> int:
    """DIR/000001.png ... for each non-blank line (1-based numbers) until `limit` files exist;
    each is written beside its name and renamed onto it, so a link planted there is replaced,
    never followed. Returns how many were written."""
    from nmt.plot import attention_figure  # matplotlib only when heatmaps are asked for

    written = 0
    for number, found in enumerate(maps, start=first_line + 1):
        if found is None or written == limit:
            continue
        figure = attention_figure(found.weights, found.src_pieces, found.tgt_pieces, title=f"line {number}")
        with atomic_output(folder / f"{number:06d}.png", "wb", into_special_files=False) as file:
            figure.savefig(file, format="png")
        written += 1
    return written


def translate(args: argparse.Namespace) -> None:
    cfg = from_flags(args, DecodeConfig)
    if args.chunk_lines < 1 or args.max_line_chars < 1 or args.max_heatmaps < 0:
        raise NmtError("--chunk-lines and --max-line-chars must be >= 1, --max-heatmaps >= 0")
    label = "<stdin>" if args.input == "-" else args.input
    output = None if args.output == "-" else Path(args.output)
    if output is not None:
        inputs = [Path(args.input)] if args.input != "-" else []
        check_distinct(output, [*inputs, *args.model])
        if output.is_dir():
            raise NmtError(f"{output}: is a folder; give -o a file name")
    if args.attention_dir:
        try:
            args.attention_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise NmtError(f"{args.attention_dir}: cannot create the --attention-dir folder ({error})") from None
    with open_input(args.input) as source:  # a missing input fails before the models load
        translator = Translator.from_checkpoints(args.model, cfg)
        if output is None:
            translate_stream(translator, args, source, label, sys.stdout)
        else:
            with atomic_output(output) as file:
                translate_stream(translator, args, source, label, file)


def translate_stream(
    translator: Translator, args: argparse.Namespace, source: IO[bytes], label: str, output: IO[str]
) -> None:
    """Translate `source` chunk by chunk into `output`, flushing after each chunk."""
    start, done, heatmaps = time.monotonic(), 0, 0
    for lines in read_chunks(source, label, args.chunk_lines, args.max_line_chars):
        try:
            results = translator.translate(lines)
        except LineError as error:
            raise NmtError(f"{label}:{done + error.index + 1}: {error.reason}") from None
        if args.attention_dir and heatmaps < args.max_heatmaps:
            maps = translator.attention(lines, [hyps[0] for hyps in results])
            heatmaps += write_heatmaps(args.attention_dir, maps, done, args.max_heatmaps - heatmaps)
        output.write(format_translations(results, translator.cfg.nbest, done, args.alignments))
        output.flush()
        done += len(lines)
        if not args.quiet and not source.isatty():  # at a terminal, the translations are the progress
            rate = done / (time.monotonic() - start)
            print(f"nmt-translate: {done} lines, {rate:.1f} sentences/s", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    # the interpreter's last collection would walk every object torch made: ~0.45 s of an exit
    atexit.register(gc.freeze)
    try:
        exit_on_user_error(lambda: translate(args))
    except BrokenPipeError:
        # the reader of stdout went away (`| head`): stop quietly as Unix tools do, and keep
        # Python from failing again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
