"""Where each precision applies: the one place that decides how fp32, bf16, fp16 and int8 run.

- Weights stay fp32 (the master copy in training). bf16 and fp16 run under autocast, which casts
  the inputs of matrix products; element-wise work and reductions stay fp32.
- Inference in bf16 or fp16 holds its weights in that dtype (`cast_weights`), cast once, so that
  autocast finds them cast rather than casting them again at every step; the encoder keeps fp32,
  as autocast runs its packed LSTM in fp32 on the CPU, so the translations are those of autocast
  over fp32 weights, bit for bit.
- Search takes log-probabilities in fp32 (`Seq2Seq.step`), and the LSTM cell state stays in the
  precision it starts in (fp32, `Decoder.init_state`); hidden states take the gates' dtype.
- The encoded source is cast once per batch to the attention keys' dtype (`Seq2Seq.encode`).
- The loss applies the output layer in the features' dtype and sums gradients in fp32 (`nmt.loss`).
- fp16 training scales the loss (`grad_scaler`); bf16 needs no scaling.
- int8 is dynamic quantization for CPU inference: linear and LSTM weights in int8, activations
  quantized per call; with a lexical shortlist each batch's rows of the output layer make an int8
  layer of their own (`nmt.model.output_rows`: faster than keeping that layer in fp32).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import warnings

import torch
from torch import nn

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision for bf16 (CPU and CUDA) and fp16 (CUDA); fp32 runs as it is."""
    if precision in DTYPES:
        return torch.autocast(device.type, dtype=DTYPES[precision])
    return contextlib.nullcontext()


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """fp16 gradients underflow without loss scaling; the scaler is a no-op otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def cast_weights(model: nn.Module, precision: str, keep: nn.Module) -> nn.Module:
    """A copy of `model` for inference whose floating-point parameters and buffers are in
    `precision`'s dtype (bf16, fp16), but for those of its submodule `keep`, which it shares with
    `model`; made without copying any fp32 tensor (tied weights stay tied), the original is untouched."""
    dtype = DTYPES[precision]
    memo: dict[int, torch.Tensor] = {}
    for tensor in itertools.chain(keep.parameters(), keep.buffers()):
        memo[id(tensor)] = tensor
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if id(tensor) not in memo and tensor.is_floating_point():
            cast = tensor.detach().to(dtype)
            memo[id(tensor)] = nn.Parameter(cast, requires_grad=False) if isinstance(tensor, nn.Parameter) else cast
    return copy.deepcopy(model, memo)  # deepcopy takes a tensor found in the memo instead of copying it


def quantize_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of the LSTM and linear layers, for CPU inference; a new model,
    the original is untouched."""
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, which is not a dependency
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            model, {nn.Linear, nn.LSTM, nn.LSTMCell}, dtype=torch.qint8, inplace=False
        )
