"""nmt: LSTM encoder-decoder NMT with attention and beam search."""

__version__ = "0.1.0"
