"""`python -m nmt.prepare`: prepare a corpus for training, once, into the cache of prepared corpora.

    python -m nmt.prepare experiment=multi30k_ende
    python -m nmt.prepare data=files data.dir=big_corpus data.num_proc=16 data.bpe_sample_size=2000000
It composes the same config as `python -m nmt.train` and runs only its first step (normalize,
Moses-tokenize, learn BPE, encode to ids; see nmt/cache.py), with progress bars on stderr. A
later `nmt.train` with the same data settings, and every torchrun rank, opens the result at once.
Prints the cache entry, its size on disk and the pairs per second.
"""

from __future__ import annotations

import sys

import datasets
import hydra
from omegaconf import DictConfig, OmegaConf

from nmt.cache import prepare
from nmt.config import Config, DataConfig, register_configs
from nmt.errors import exit_on_user_error
from nmt.tokenization import bpe_progress


def run(cfg: DataConfig) -> str:
    """Prepare (or find) the corpus -> a one-line report."""
    with bpe_progress(sys.stderr.isatty()):
        data = prepare(cfg)
    assert data.cache is not None
    size = sum(path.stat().st_size for path in data.cache.rglob("*") if path.is_file())
    where = f"{data.cache} ({size / 2**20:,.1f} MiB)"
    kept = f"{data.train_report.kept:,} training pairs kept after length filters"
    if not data.built:
        return f"reused {where}: {data.pairs:,} pairs, opened in {data.seconds:.2f} s; {kept}"
    speed = data.pairs / max(data.seconds, 1e-9)
    return f"prepared {data.pairs:,} pairs in {data.seconds:.1f} s ({speed:,.0f} pairs/s) into {where}; {kept}"


register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="prepare")
def main(dict_cfg: DictConfig) -> None:
    datasets.enable_progress_bars()  # the map steps and the reading show bars on stderr

    def prepare_data() -> str:
        cfg: Config = OmegaConf.to_object(dict_cfg)  # an impossible value is a user error too
        return run(cfg.data)

    print(exit_on_user_error(prepare_data))


if __name__ == "__main__":
    main()
