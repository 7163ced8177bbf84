"""The OpenNMT-py side of the peer comparison, measured on this machine with our data.

    python scripts/bench_peer_opennmt.py --venv /tmp/onmt-venv --minutes 12
The issues quote peer figures from another machine; this runs OpenNMT-py 3.5.1 here on the
same subword text our pipeline makes (experiment=multi30k_ende: joint BPE, Multi30k En->De)
with the reference architecture (embeddings 256, bi-LSTM 2 x 256, LSTM decoder 512, Luong
general attention with input feeding, dropout 0.3, Adam 1e-3, ~4,000-token batches, label
smoothing 0.1), so the figures compare with scripts/bench_train.py and scripts/bench_decode.py.

It makes a virtual environment that sees this Python's packages (torch included; OpenNMT-py
itself pins torch < 2.3, which is not installed here, so it is installed without its pins),
trains for --minutes of wall time, then translates test_2016_flickr with beam 5 from the last
checkpoint saved in that time (every 50 steps), with OpenNMT-py's default batch and with
batches of nmt-translate's size. Prints one JSON object: target tokens/s (mean of OpenNMT-py's
own reports over steps 20-120, and over its last 100 steps, once its data workers have loaded
the corpus), steps done, peak RSS of training and of each translation, its
wall time (process start-up included), sentences/s (model loading excluded, as OpenNMT-py
reports it) and detokenized sacreBLEU. Run it alone on the machine, like every benchmark.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nmt import metrics
from nmt.cache import prepare
from nmt.config import Config, DecodeConfig, register_configs
from nmt.data import PreparedData
from nmt.tokenization import TextPipeline

REPO = Path(__file__).resolve().parents[1]
# OpenNMT-py pins torch < 2.3, so it goes in without its requirements; these are the ones it
# imports at start-up (several only for features this benchmark does not use)
REQUIREMENTS = ["configargparse", "pyonmttok>=1.37,<2", "spacy", "pyahocorasick", "rapidfuzz", "fasttext-wheel"]
REQUIREMENTS += ["ctranslate2>=4,<5", "waitress", "flask", "tensorboard"]
SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
# "Step 40/100000; acc: 10.9; ppl: 590.3; xent: 6.4; lr: 0.00100; sents: 2770; bsz: 1343/1452/69; 4221/4565 tok/s;"
REPORT = re.compile(r"Step (\d+)/.*?; (\d+)/(\d+) tok/s;")


def reference_config(work: Path) -> str:
    """OpenNMT-py's YAML for the reference architecture; training stops by time (the caller), not steps."""
    return f"""\
save_data: {work}
src_vocab: {work}/vocab.src
tgt_vocab: {work}/vocab.tgt
overwrite: true
data:
  corpus_1: {{path_src: {work}/train.src, path_tgt: {work}/train.tgt}}
  valid: {{path_src: {work}/valid.src, path_tgt: {work}/valid.tgt}}
src_vocab_size: 50000
tgt_vocab_size: 50000
src_seq_length: 100
tgt_seq_length: 100
encoder_type: brnn
decoder_type: rnn
rnn_type: LSTM
enc_layers: 1
dec_layers: 1
src_word_vec_size: 256
tgt_word_vec_size: 256
enc_hid_size: 512
dec_hid_size: 512
global_attention: general
input_feed: 1
dropout: [0.3]
optim: adam
learning_rate: 0.001
max_grad_norm: 1.0
label_smoothing: 0.1
batch_type: tokens
batch_size: 4000
train_steps: 1000000
valid_steps: 1000000
save_checkpoint_steps: 50
keep_checkpoint: 1
report_every: 10
save_model: {work}/model
seed: 1
"""


def export_subwords(cfg: Config, data: PreparedData, work: Path) -> None:
    """Each split as space-separated BPE pieces, exactly as our training sees them."""
    for name, split in SPLITS.items():
        for side, lang, pipeline in (
            ("src", cfg.data.src_lang, data.src_pipeline),
            ("tgt", cfg.data.tgt_lang, data.tgt_pipeline),
        ):
            with gzip.open(Path(cfg.data.dir) / f"{split}.{lang}.gz", "rt", encoding="utf-8") as file:
                lines = file.read().splitlines()
            pieces = pipeline.segment([pipeline.moses.tokenize(line) for line in lines])
            (work / f"{name}.{side}").write_text("".join(" ".join(p) + "\n" for p in pieces), encoding="utf-8")


def run(command: list, log: Path, timeout: float | None = None, env: dict | None = None) -> float:
    """Run to the end (or stop it after timeout seconds) with its output in log -> its peak RSS, MB."""
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(part) for part in command],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group, so that stopping it stops its data workers too
        )
        deadline = time.monotonic() + timeout if timeout else None
        while deadline and process.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
        if process.returncode is None and deadline:
            os.killpg(process.pid, signal.SIGTERM)
        _, status, usage = os.wait4(process.pid, 0)
    if status and not deadline:
        raise SystemExit(f"{command[0]} failed; see {log}")
    return usage.ru_maxrss / 1024


def train(venv: Path, work: Path, minutes: float) -> dict:
    config = work / "onmt.yaml"
    run([venv / "bin/onmt_build_vocab", "-config", config, "-n_sample", "-1"], work / "vocab.log")
    log = work / "train.log"
    rss = run([venv / "bin/onmt_train", "-config", config], log, timeout=minutes * 60)
    reports = [(int(step), int(tgt)) for step, _, tgt in REPORT.findall(log.read_text())]
    window = [tgt for step, tgt in reports if 20 < step <= 120]
    # its data workers load the corpus on the same 2 cores during the first few minutes
    last = [tgt for step, tgt in reports[-10:]]
    return {
        "tgt_tokens_per_s": sum(window) / len(window) if window else None,
        "tgt_tokens_per_s_last_100_steps": sum(last) / len(last) if last else None,
        "steps": reports[-1][0] if reports else 0,
        "training_peak_rss_mb": rss,
    }


def translate(
    venv: Path, work: Path, batch: list[str], references: list[str], pipeline: TextPipeline, beam: int = 5
) -> dict:
    """The test set at `beam` from the last checkpoint; its output detokenized as ours is."""
    checkpoints = sorted(work.glob("model_step_*.pt"), key=lambda path: int(path.stem.rsplit("_", 1)[1]))
    output, log = work / "test.hyp", work / "translate.log"
    command = [venv / "bin/onmt_translate", "-model", checkpoints[-1], "-src", work / "test.src"]
    command += ["-output", output, "-beam_size", str(beam), "-report_time", *batch]
    start = time.perf_counter()
    # its checkpoints pickle an argparse.Namespace, which torch >= 2.6 refuses to load by default
    rss = run(command, log, env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    wall = time.perf_counter() - start
    seconds = float(re.findall(r"Total translation time \(s\): ([\d.]+)", log.read_text())[-1])
    hypotheses = [
        pipeline.moses.detokenize(pipeline.words(pipeline.vocab.ids(line.split())))
        for line in output.read_text(encoding="utf-8").splitlines()
    ]
    return {
        "batch": " ".join(batch) or "default",
        "checkpoint": checkpoints[-1].name,
        "wall_s": wall,
        "sentences_per_s": len(hypotheses) / seconds,
        "peak_rss_mb": rss,
        "bleu": metrics.bleu(hypotheses, references)[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, required=True, help="made here if it does not exist")
    parser.add_argument("--work", type=Path, default=Path("runs/peer_opennmt"))
    parser.add_argument("--minutes", type=float, default=12.0, help="training wall time")
    args, overrides = parser.parse_known_args()
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg: Config = OmegaConf.to_object(compose("train", ["experiment=multi30k_ende", *overrides]))
    if not (args.venv / "bin/onmt_train").exists():
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", args.venv], check=True)
        pip = [args.venv / "bin/pip", "install", "-q"]
        subprocess.run([*pip, "--no-deps", "OpenNMT-py==3.5.1"], check=True)
        subprocess.run([*pip, *REQUIREMENTS], check=True)
    args.work.mkdir(parents=True, exist_ok=True)
    data = prepare(cfg.data)
    export_subwords(cfg, data, args.work)
    (args.work / "onmt.yaml").write_text(reference_config(args.work.resolve()))
    with gzip.open(Path(cfg.data.dir) / f"{SPLITS['test']}.{cfg.data.tgt_lang}.gz", "rt", encoding="utf-8") as file:
        references = file.read().splitlines()
    result = {"peer": "OpenNMT-py 3.5.1", **train(args.venv, args.work, args.minutes)}
    # its default batch (30 sentences), and batches of as many source tokens as nmt-translate's
    # (4,000 search rows x length at beam 5)
    batches = ([], ["-batch_type", "tokens", "-batch_size", str(DecodeConfig().batch_tokens // 5)])
    result["translate"] = [translate(args.venv, args.work, batch, references, data.tgt_pipeline) for batch in batches]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
