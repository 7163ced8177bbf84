"""`nmt-translate`: translate raw sentences, one per line, with a trained checkpoint.

    nmt-translate -m runs/ende/checkpoints/best.pt -i test.en -o test.de --beam-size 5
Without -i/-o (or with -) it reads stdin and writes stdout. With --nbest K > 1 each input line
gives K lines "LINE_NUMBER ||| translation ||| score" (Moses n-best format, 0-based lines).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from nmt import checkpoint
from nmt.config import DecodeConfig
from nmt.data import read_lines
from nmt.errors import NmtError, exit_on_user_error
from nmt.translator import Translation, Translator

DEFAULTS = DecodeConfig()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nmt-translate", description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", required=True, type=Path, help="checkpoint file (.pt)")
    parser.add_argument("-i", "--input", default="-", help="raw source text, one sentence per line (- = stdin)")
    parser.add_argument("-o", "--output", default="-", help="where translations go (- = stdout)")
    parser.add_argument("--beam-size", type=int, default=DEFAULTS.beam_size, help="1 = greedy search")
    parser.add_argument("--nbest", type=int, default=DEFAULTS.nbest, help="hypotheses printed per sentence")
    parser.add_argument("--batch-tokens", type=int, default=DEFAULTS.batch_tokens, help="source tokens per batch")
    parser.add_argument("--max-length-ratio", type=float, default=DEFAULTS.max_length_ratio)
    parser.add_argument("--max-length-offset", type=int, default=DEFAULTS.max_length_offset)
    parser.add_argument("--length-penalty", type=float, default=DEFAULTS.length_penalty, help="GNMT alpha")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    return parser.parse_args(argv)


def read_input(name: str) -> list[str]:
    if name == "-":
        data = sys.stdin.buffer.read()
        try:
            return data.decode("utf-8").splitlines()
        except UnicodeDecodeError as error:
            line = data[: error.start].count(b"\n") + 1
            raise NmtError(f"<stdin>:{line}: invalid UTF-8; convert the input to UTF-8") from None
    return read_lines(Path(name))


def format_output(results: list[list[Translation]], nbest: int) -> str:
    if nbest == 1:
        return "".join(f"{hyps[0].text}\n" for hyps in results)
    return "".join(
        f"{number} ||| {hyp.text} ||| {hyp.score:.4f}\n" for number, hyps in enumerate(results) for hyp in hyps
    )


def translate(args: argparse.Namespace) -> None:
    cfg = DecodeConfig(
        beam_size=args.beam_size,
        nbest=args.nbest,
        batch_tokens=args.batch_tokens,
        max_length_ratio=args.max_length_ratio,
        max_length_offset=args.max_length_offset,
        length_penalty=args.length_penalty,
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    model, src, tgt, _ = checkpoint.restore(checkpoint.load(args.model), args.model)
    lines = read_input(args.input)
    translator = Translator(model.to(args.device), src, tgt, cfg, precision=args.precision)
    text = format_output(translator.translate(lines), cfg.nbest)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    exit_on_user_error(lambda: translate(args))


if __name__ == "__main__":
    main()
