"""Continuous batching in one process, without HTTP: the ceiling of what nmt-serve's engine does.

    python scripts/bench_continuous.py runs/ende/checkpoints/best.pt --live 16,32,64
For each N of --live, N one-sentence requests are kept in flight through `ContinuousBatches` (a
new one added for each answered, in file order, as the service's clients would send them) until
the split (Multi30k test_2016_flickr by default) is translated; then the same sentences through
`Translator.translate` (length-sorted token-budget batches, as nmt-translate) and in consecutive
static batches of N. Prints one JSON line per setting: sentences/s, and for continuous batching
the search steps and the mean sentences per step; each line ends with the ratio to
`Translator.translate`. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

from nmt.config import DecodeConfig
from nmt.continuous import ContinuousBatches
from nmt.translator import Translator

REPO = Path(__file__).resolve().parents[1]


def continuous(translator: Translator, lines: list[str], live: int) -> dict:
    """Translate `lines` as `live` one-sentence requests in flight at a time."""
    running = ContinuousBatches(translator)
    started = time.perf_counter()
    sent = answered = steps = sentences = 0
    refill = live
    while refill or running.busy:
        more = range(sent, min(sent + refill, len(lines)))
        sent = more.stop
        done = running.add([(index, (), [lines[index]]) for index in more])  # a blank line is answered at once
        if running.busy:
            answers, batches = running.step()
            done += answers
            steps += 1
            sentences += sum(count for count, _ in batches)
        answered += len(done)
        refill = len(done) if sent < len(lines) else 0
    seconds = time.perf_counter() - started
    assert answered == len(lines)
    return {
        "sentences_per_second": round(len(lines) / seconds, 1),
        "steps": steps,
        "sentences_per_step": round(sentences / steps, 1),
    }


def static(translator: Translator, lines: list[str], size: int) -> dict:
    """Translate `lines` in consecutive batches of `size` (0: all at once, as nmt-translate)."""
    started = time.perf_counter()
    for start in range(0, len(lines), size or len(lines)):
        translator.translate(lines[start : start + (size or len(lines))])
    return {"sentences_per_second": round(len(lines) / (time.perf_counter() - started), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "multi30k")
    parser.add_argument("--source", default="test_2016_flickr.en.gz", help="file in --data-dir, one sentence a line")
    parser.add_argument("--live", default="32", help="requests in flight, comma-separated")
    parser.add_argument("--beam-size", type=int, default=5)
    args = parser.parse_args()
    with gzip.open(args.data_dir / args.source, "rt", encoding="utf-8") as source:
        lines = [line.rstrip("\n") for line in source]
    translator = Translator.from_checkpoints([args.checkpoint], DecodeConfig(beam_size=args.beam_size))
    translator.translate(lines[:50])  # first-call allocations and kernel choices
    whole = static(translator, lines, 0)
    print(json.dumps({"setting": "Translator.translate", **whole}), flush=True)
    for live in (int(n) for n in args.live.split(",")):
        for setting, result in (
            ("continuous", continuous(translator, lines, live)),
            ("static", static(translator, lines, live)),
        ):
            ratio = round(result["sentences_per_second"] / whole["sentences_per_second"], 3)
            print(json.dumps({"setting": setting, "live": live, **result, "ratio": ratio}), flush=True)


if __name__ == "__main__":
    main()
