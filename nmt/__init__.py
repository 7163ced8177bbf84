"""nmt: LSTM encoder-decoder NMT with attention and beam search."""

import os

__version__ = "0.1.0"

# bf16 products on CPU go through oneDNN, which keeps a compiled primitive per input shape, 1,024 of
# them by default, and through PyTorch's ideep layer, which keeps its own 1,024 per shape: training
# batches and the shrinking batches of beam search, all of different shapes, filled them with
# hundreds of MB (measured with scripts/bench_train.py and scripts/bench_decode.py: beam 5 bf16
# decoding peaked at 657 MB with ideep's default, 448 MB with 32, at the same speed).
# An explicit setting in the environment wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "32")
os.environ.setdefault("LRU_CACHE_CAPACITY", "32")
