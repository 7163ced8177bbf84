"""nmt: LSTM encoder-decoder NMT with attention and beam search."""

import os

__version__ = "0.1.0"

# bf16 products on CPU go through oneDNN, which keeps a compiled primitive per input shape, 1,024 of
# them by default: training batches, all of different shapes, filled it with hundreds of MB
# (measured with scripts/bench_train.py). An explicit setting in the environment wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "32")
