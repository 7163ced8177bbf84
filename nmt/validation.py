"""Validation during training: per-token loss, and BLEU and chrF of the validation set translated
by the same engine as `nmt-translate`, with the search of `Config.validation_decode()`
(train.valid_beam_size and every other decode.* key), so what is tuned on val is what runs on test."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from nmt import metrics
from nmt.batching import epoch_batches, make_batch
from nmt.config import Config
from nmt.data import EncodedCorpus, PreparedData
from nmt.errors import LineError, NmtError
from nmt.loss import sequence_loss
from nmt.model import Seq2Seq
from nmt.precision import autocast
from nmt.translator import Translator
from nmt.vocab import PAD

Track = Callable[[list[Any], str], Iterable[Any]]  # (batches, description) -> the same batches, e.g. in a bar


@torch.no_grad()
def validation_loss(model: Seq2Seq, corpus: EncodedCorpus, batch_tokens: int, precision: str) -> float:
    """Per-token negative log-likelihood on a corpus."""
    device = next(model.parameters()).device
    nll, tokens = 0.0, 0
    for indices in epoch_batches(corpus, batch_tokens, seed=0, epoch=0):
        batch = make_batch(corpus, indices).to(device)
        real = batch.tgt_out != PAD
        with autocast(precision, device):
            features = model(batch.src, batch.src_len, batch.tgt_in, real)
        out = sequence_loss(features, model.output, batch.tgt_out[real], label_smoothing=0.0)
        nll, tokens = nll + float(out.nll), tokens + out.tokens
    return nll / max(tokens, 1)


def validate(
    model: Seq2Seq, data: PreparedData, cfg: Config, track: Track, shortlist: dict[str, Any] | None = None
) -> dict[str, float]:
    """valid_loss and valid_ppl; with train.valid_metric=bleu also valid_bleu and valid_chrf.
    `shortlist`: the table the checkpoints get (`nmt.shortlist.build`), for decode.shortlist.
    Leaves the model in eval mode."""
    model.eval()
    loss = validation_loss(model, data.val, cfg.train.batch_tokens, cfg.train.precision)
    record = {"valid_loss": loss, "valid_ppl": math.exp(min(loss, 100.0))}
    if cfg.train.valid_metric == "bleu":
        # a new engine each time: its inference tables belong to these weights
        translator = Translator.from_models(
            [model], data.src_pipeline, data.tgt_pipeline, cfg.validation_decode(), shortlist
        )
        try:
            results = translator.translate(data.val.src_text, lambda batches: track(batches, "validation"))
        except LineError as error:
            raise NmtError(
                f"validation split {cfg.data.splits['val']!r}, {error}; raise decode.max_source_length or set "
                "decode.truncate_source=true"
            ) from None
        hypotheses = [hyps[0].text for hyps in results]
        record["valid_bleu"], _ = metrics.bleu(hypotheses, data.val.tgt_text)
        record["valid_chrf"], _ = metrics.chrf(hypotheses, data.val.tgt_text)
    return record
