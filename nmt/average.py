"""`python -m nmt.average`: average the weights of checkpoints of one run into a new checkpoint.

    python -m nmt.average runs/ende/checkpoints/step-*.pt -o runs/ende/checkpoints/average.pt
The checkpoints must share the model config and vocabularies; the output keeps the first one's
config, BPE models, vocabularies and shortlist, so `nmt-translate` loads it like any other. It holds weights
only, no training state: a run cannot be resumed from it.
The output is refused, before any work, if it is one of the inputs, a folder, a file that is not
a checkpoint, or cannot be written.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch

from nmt import checkpoint
from nmt.config import ModelConfig
from nmt.errors import NmtError, exit_on_user_error

SHARED_KEYS = ("model_config", "src_vocab", "tgt_vocab", "src_bpe", "tgt_bpe")


def _setting(state: dict[str, Any], key: str) -> Any:
    """A checkpoint's `key`; the model config as its dataclass, whose defaults fill keys that an older
    checkpoint of the same run lacks."""
    return ModelConfig(**state[key]) if key == "model_config" else state[key]


def average(checkpoints: list[dict[str, Any]], paths: list[Path]) -> dict[str, Any]:
    """A checkpoint whose floating-point weights are the mean of the given ones'."""
    first = checkpoints[0]
    for state, path in zip(checkpoints[1:], paths[1:]):
        for key in SHARED_KEYS:
            if _setting(state, key) != _setting(first, key):
                raise NmtError(f"{path}: its {key} differs from {paths[0]}'s; average checkpoints of one run")
    weights = {}
    for name, tensor in first["model"].items():
        if tensor.is_floating_point():
            weights[name] = (
                torch.stack([state["model"][name].float() for state in checkpoints]).mean(0).to(tensor.dtype)
            )
        else:
            weights[name] = tensor
    # a shortlist comes from the run's training data and vocabularies, which the models share
    keep = ("format_version", "model_config", "data_config", *SHARED_KEYS[1:], "step", "shortlist")
    return {
        **{key: first[key] for key in keep if key in first},
        "model": weights,
        "averaged_from": [str(p) for p in paths],
    }


def check_output(output: Path, inputs: list[Path]) -> None:
    """Refuse an output that would overwrite an input or a file that is not a checkpoint, or cannot be written."""
    if output.is_dir():
        raise NmtError(f"{output}: is a folder; name the averaged checkpoint's file, e.g. {output / 'average.pt'}")
    if output.exists():
        same = [path for path in inputs if path.exists() and os.path.samefile(path, output)]
        if same:
            raise NmtError(f"{output}: is also an input ({same[0]}); write the average to a new file")
        try:
            checkpoint.load(output)
        except NmtError as error:
            raise NmtError(f"{output}: exists and is not a checkpoint, so it is not overwritten ({error})") from None
    folder = next(parent for parent in output.absolute().parents if parent.exists())
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise NmtError(f"{output}: cannot be written: {folder} is not a folder this user may write to")


def average_files(inputs: list[Path], output: Path) -> None:
    check_output(output, inputs)
    averaged = average([checkpoint.load(path) for path in inputs], inputs)
    checkpoint.restore(averaged, output)  # refuse to write what nmt-translate could not load
    try:
        checkpoint.save(output, averaged)
    except OSError as error:
        raise NmtError(f"{output}: cannot be written ({error.strerror or error})") from None


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nmt.average", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("-o", "--output", required=True, type=Path)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)

    exit_on_user_error(lambda: average_files(args.checkpoints, args.output))
    print(f"averaged {len(args.checkpoints)} checkpoints into {args.output}")


if __name__ == "__main__":
    main()
