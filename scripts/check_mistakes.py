"""Make the mistakes users make, and check that each ends in one line of error and loses nothing.

    python scripts/check_mistakes.py runs/demo/checkpoints/best.pt
Each case runs the real command in a scratch folder (copies of the checkpoint, a small input)
and prints one JSON object per case: the exit status, whether stderr was one `error:` line, and
whether every file the command could have harmed is byte for byte as before.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "absent"


def crafted(checkpoint: Path, target: Path) -> None:
    """A checkpoint with valid tensors and an absurd model size."""
    state = torch.load(checkpoint, weights_only=True)
    state["model_config"]["embed_size"] = 2**22
    torch.save(state, target)


def cases(work: Path, model: Path) -> list[tuple[str, list[str], list[Path], Callable[[], None] | None]]:
    """(name, command, files that must survive unchanged, preparation)."""
    source, output, link = work / "in.txt", work / "out.txt", work / "maps" / "000001.png"
    translate = [sys.executable, "-m", "nmt.translate", "--quiet", "-m", str(model)]
    average = [sys.executable, "-m", "nmt.average", str(model), str(model)]

    def plant_link() -> None:
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(work / "victim.txt")

    return [
        ("output is the input", [*translate, "-i", str(source), "-o", str(source)], [source], None),
        ("output is the model", [*translate, "-i", str(source), "-o", str(model)], [model], None),
        ("bad line half-way", [*translate, "-i", str(work / "bad.txt"), "-o", str(output), "--chunk-lines", "1"],
         [output], None),
        ("endless line", [*translate, "-i", "/dev/zero", "--max-line-chars", "100000"], [], None),
        ("truncated gzip", [*translate, "-i", str(work / "cut.txt.gz")], [], None),
        ("planted link", [*translate, "-i", str(source), "--attention-dir", str(link.parent)], [work / "victim.txt"],
         plant_link),
        ("absurd checkpoint", [*translate, "-m", str(work / "crafted.pt"), "-i", str(source)], [], None),
        ("average onto an input", [*average, "-o", str(model)], [model], None),
        ("average into a folder", [*average, "-o", str(work)], [], None),
        ("resume from best.pt", [sys.executable, "-m", "nmt.train", f"train.resume={model}",
                                 f"hydra.run.dir={work / 'run'}"], [model], None),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a trained best.pt, e.g. runs/demo/checkpoints/best.pt")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        model = work / "best.pt"
        shutil.copy(args.checkpoint, model)
        (work / "in.txt").write_text("a small test .\nanother line .\n")
        (work / "bad.txt").write_bytes(b"a small test .\nbad \xff byte\n")
        (work / "out.txt").write_text("yesterday's translations\n")
        (work / "victim.txt").write_text("keep me\n")
        packed = gzip.compress(b"a small test .\n" * 10_000)
        (work / "cut.txt.gz").write_bytes(packed[: len(packed) // 2])
        crafted(model, work / "crafted.pt")
        for name, command, guarded, prepare in cases(work, model):
            if prepare:
                prepare()
            before = {path: digest(path) for path in guarded}
            result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300,
                                    env={**os.environ, "NMT_CACHE": str(work / "cache")})  # fmt: skip
            lines = result.stderr.strip().splitlines()
            print(json.dumps({
                "case": name,
                "exit": result.returncode,
                "one_line_error": result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "),
                "nothing_lost": all(digest(path) == sha for path, sha in before.items()),
                "message": lines[-1] if lines else "",
            }))  # fmt: skip


if __name__ == "__main__":
    main()
