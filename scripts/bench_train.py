"""Training throughput benchmark: target tokens/s, achieved GFLOPS and MFU, peak RSS.

    python scripts/bench_train.py --steps 100 --warmup 20 train.precision=bf16
Trailing arguments are Hydra overrides of conf/train.yaml on top of `experiment=multi30k_ende`
(the reference architecture on Multi30k from ../shared/data/multi30k, or data.dir=...).
Prints one JSON object. FLOPs are counted analytically from the architecture (a multiply-add
is 2 FLOPs, backward is twice forward); the GEMM peaks are measured in the same process.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nmt.batching import epoch_batches, make_batch
from nmt.config import Config, ModelConfig, register_configs
from nmt.errors import NmtError
from nmt.run_folder import RunFolder
from nmt.train import setup

CONF = Path(__file__).resolve().parents[1] / "conf"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_peak_gflops(dtype: torch.dtype, device: torch.device) -> float:
    """Throughput of large matrix multiplies on the device, in GFLOPS: 4096 x 512 x 8000
    (the output layer's shape) on CPU, 8192 cubed on a GPU."""
    m, k, n, repeats = (4096, 512, 8000, 20) if device.type == "cpu" else (8192, 8192, 8192, 50)
    a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * m * k * n * repeats / (time.perf_counter() - start) / 1e9


def training_flops(cfg: ModelConfig, tgt_vocab: int, src_tokens: int, tgt_tokens: int, src_positions: int) -> float:
    """Forward + backward FLOPs of a batch; src_positions = sum over target tokens of the padded
    source length they attend over. Embedding look-ups and element-wise ops are not counted."""
    e, h, half = cfg.embed_size, cfg.hidden_size, cfg.hidden_size // 2
    encoder_per_src = 2 * 2 * 4 * half * (e + half) * cfg.encoder_layers  # two directions, 4 gates
    keys_per_src = 2 * h * h if cfg.attention != "dot" else 0
    decoder_per_tgt = (
        2 * 4 * h * (e + 2 * h)  # first layer: [embedding; input feed] and recurrent weights
        + 2 * 4 * h * 2 * h * (cfg.decoder_layers - 1)
        + 2 * 2 * h * h  # W_c [context; h]
        + 2 * h * tgt_vocab  # output layer
    )
    attention = 2 * 2 * h * src_positions  # scores and context
    forward = src_tokens * (encoder_per_src + keys_per_src) + tgt_tokens * decoder_per_tgt + attention
    return 3.0 * forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    args, overrides = parser.parse_known_args()
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg: Config = OmegaConf.to_object(compose("train", ["experiment=multi30k_ende", *overrides]))
    # a run folder that writes nothing: the benchmark times updates, not checkpoints
    data, model, trainer = setup(cfg, RunFolder(Path("unused"), cfg.train, lead=False))
    model.train()
    plan = [
        b for epoch in range(1, 100) for b in epoch_batches(data.train, cfg.train.batch_tokens, cfg.train.seed, epoch)
    ]
    counts = dict(src=0, tgt=0, src_padded=0, tgt_padded=0, src_positions=0)
    data_seconds = 0.0
    for step, indices in enumerate(plan[: args.warmup + args.steps]):
        if step == args.warmup:
            synchronize(trainer.device)
            start = time.perf_counter()
            data_seconds = 0.0
        before = time.perf_counter()
        batch = make_batch(data.train, indices)
        data_seconds += time.perf_counter() - before
        trainer.update([batch])
        if step >= args.warmup:
            src_tokens, tgt_tokens = int(batch.src_len.sum()), batch.target_tokens
            counts["src"] += src_tokens
            counts["tgt"] += tgt_tokens
            counts["src_padded"] += batch.src.numel()
            counts["tgt_padded"] += batch.tgt_out.numel()
            counts["src_positions"] += tgt_tokens * batch.src.size(1)
    synchronize(trainer.device)
    seconds = time.perf_counter() - start
    training_peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the GEMM probes
    flops = training_flops(
        cfg.model, data.tgt_pipeline.vocab_size, counts["src"], counts["tgt"], counts["src_positions"]
    )
    achieved = flops / seconds / 1e9
    fp32_peak = gemm_peak_gflops(torch.float32, trainer.device)
    bf16_peak = gemm_peak_gflops(torch.bfloat16, trainer.device)
    print(
        json.dumps(
            {
                "tgt_tokens_per_s": counts["tgt"] / seconds,
                "src_tokens_per_s": counts["src"] / seconds,
                # the decoder's time loop pays for target padding; the packed encoder skips source padding
                "tgt_padding_fraction": 1 - counts["tgt"] / counts["tgt_padded"],
                "src_padding_fraction": 1 - counts["src"] / counts["src_padded"],
                "flops_per_tgt_token": flops / counts["tgt"],
                "achieved_gflops": achieved,
                "gemm_peak_gflops_fp32": fp32_peak,
                "gemm_peak_gflops_bf16": bf16_peak,
                "mfu_vs_fp32_peak": achieved / fp32_peak,
                "mfu_vs_bf16_peak": achieved / bf16_peak,
                "data_wait_fraction": data_seconds / seconds,
                "peak_rss_mb": training_peak_rss_mb,
                "peak_gpu_memory_mb": torch.cuda.max_memory_allocated() / 2**20
                if trainer.device.type == "cuda"
                else 0.0,
                "steps": args.steps,
                "seconds": seconds,
                "parameters": sum(p.numel() for p in model.parameters()),
                "precision": cfg.train.precision,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "device": torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else "cpu",
                "batch_tokens": cfg.train.batch_tokens,
            }
        )
    )


if __name__ == "__main__":
    try:
        main()
    except NmtError as error:
        sys.exit(f"error: {error}")
