"""`python -m nmt.average`: average the weights of checkpoints of one run into a new checkpoint.

    python -m nmt.average runs/ende/checkpoints/step-*.pt -o runs/ende/checkpoints/average.pt
The checkpoints must share the model config and vocabularies; the output keeps the first one's
config, BPE models and vocabularies, so `nmt-translate` loads it like any other.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from nmt import checkpoint
from nmt.errors import NmtError, exit_on_user_error

SHARED_KEYS = ("model_config", "src_vocab", "tgt_vocab", "src_bpe", "tgt_bpe")


def average(checkpoints: list[dict[str, Any]], paths: list[Path]) -> dict[str, Any]:
    """A checkpoint whose floating-point weights are the mean of the given ones'."""
    first = checkpoints[0]
    for state, path in zip(checkpoints[1:], paths[1:]):
        for key in SHARED_KEYS:
            if state[key] != first[key]:
                raise NmtError(f"{path}: its {key} differs from {paths[0]}'s; average checkpoints of one run")
    weights = {}
    for name, tensor in first["model"].items():
        if tensor.is_floating_point():
            weights[name] = (
                torch.stack([state["model"][name].float() for state in checkpoints]).mean(0).to(tensor.dtype)
            )
        else:
            weights[name] = tensor
    keep = ("format_version", "model_config", "data_config", *SHARED_KEYS[1:], "step")
    return {
        **{key: first[key] for key in keep if key in first},
        "model": weights,
        "averaged_from": [str(p) for p in paths],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nmt.average", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("-o", "--output", required=True, type=Path)
    args = parser.parse_args(argv)

    def run() -> None:
        averaged = average([checkpoint.load(path) for path in args.checkpoints], args.checkpoints)
        checkpoint.restore(averaged, args.output)  # refuse to write what nmt-translate could not load
        checkpoint.save(args.output, averaged)
        print(f"averaged {len(args.checkpoints)} checkpoints into {args.output}")

    exit_on_user_error(run)


if __name__ == "__main__":
    main()
