"""The network's shapes, padding invariance, LSTM and attention equations, and the loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nmt.activation import tanh
from nmt.attention import Attention
from nmt.config import Dropouts, ModelConfig
from nmt.decoder import DecoderState, lstm_cell
from nmt.dropout import Dropout, word_dropout
from nmt.errors import NmtError
from nmt.loss import sequence_loss
from nmt.model import EncodedSource, InferenceModel, Seq2Seq
from nmt.vocab import BOS, EOS, PAD, UNK

SRC_VOCAB, TGT_VOCAB = 23, 19


def make_model(seed: int = 0, **overrides: object) -> Seq2Seq:
    settings = {"embed_size": 12, "hidden_size": 16, "dropout": 0.0, **overrides}
    torch.manual_seed(seed)
    return Seq2Seq(ModelConfig(**settings), SRC_VOCAB, TGT_VOCAB).eval()


def teacher_forced_logits(model: Seq2Seq, *inputs: torch.Tensor) -> torch.Tensor:
    return model.logits(model(*inputs))


def random_ids(generator: torch.Generator, length: int, vocab: int) -> list[int]:
    # real tokens only: ids from EOS + 1 up, so no PAD/BOS/EOS inside a sentence
    return torch.randint(EOS + 1, vocab, (length,), generator=generator).tolist()


def pad_rows(rows: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(rows), max(len(row) for row in rows)), PAD, dtype=torch.long)
    for index, row in enumerate(rows):
        out[index, : len(row)] = torch.tensor(row)
    return out


def source_batch(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_rows(rows), torch.tensor([len(row) for row in rows])


def target_input(rows: list[list[int]]) -> torch.Tensor:
    return pad_rows([[BOS, *row] for row in rows])


@pytest.mark.parametrize(
    "overrides",
    [
        {"attention": "dot"},
        {"attention": "general"},
        {"attention": "additive"},
        {"encoder_layers": 2, "decoder_layers": 2},
        {"tie_embeddings": True},
        {"tie_embeddings": True, "embed_size": 16},
    ],
    ids=["dot", "general", "additive", "two-layers", "tied", "tied-same-size"],
)
def test_forward_gives_batch_time_vocab_logits(overrides: dict) -> None:
    model = make_model(**overrides)
    generator = torch.Generator().manual_seed(1)
    src, src_len = source_batch([random_ids(generator, n, SRC_VOCAB) for n in (5, 3, 7)])
    tgt_in = target_input([random_ids(generator, n, TGT_VOCAB) for n in (4, 6, 2)])

    logits = teacher_forced_logits(model, src, src_len, tgt_in)

    assert logits.shape == (3, 7, TGT_VOCAB)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(("embed_size", "projection"), [(12, torch.nn.Linear), (16, torch.nn.Identity)])
def test_tied_output_layer_is_the_decoder_embedding(embed_size: int, projection: type) -> None:
    model = make_model(embed_size=embed_size, hidden_size=16, tie_embeddings=True)

    assert model.output.weight is model.decoder.embed.weight
    assert isinstance(model.output_proj, projection)
    # one parameter, so training one trains the other
    names = [name for name, _ in model.named_parameters()]
    assert "output.weight" not in names
    assert "decoder.embed.weight" in names


def test_three_way_tying_makes_one_matrix_of_both_embeddings_and_the_output_layer() -> None:
    torch.manual_seed(0)
    model = Seq2Seq(ModelConfig(embed_size=12, hidden_size=16, tie_embeddings=True, share_embeddings=True), 23, 23)
    assert model.encoder.embed.weight is model.decoder.embed.weight is model.output.weight
    two_way = Seq2Seq(ModelConfig(embed_size=12, hidden_size=16, tie_embeddings=True), 23, 23)
    assert sum(p.numel() for p in two_way.parameters()) - sum(p.numel() for p in model.parameters()) == 23 * 12
    model(*source_batch([[4, 5, 6]]), target_input([[7, 8]])).sum().backward()
    # the gradient of the one matrix holds the source rows' and the target rows' share
    assert model.encoder.embed.weight.grad[[4, 5, 6, 7, 8]].abs().sum(dim=1).gt(0).all()
    with pytest.raises(ValueError, match="one vocabulary for both sides"):
        Seq2Seq(ModelConfig(share_embeddings=True), SRC_VOCAB, TGT_VOCAB)


def test_untied_output_layer_has_its_own_weight() -> None:
    model = make_model(tie_embeddings=False)
    assert model.output.weight is not model.decoder.embed.weight
    assert model.output.weight.shape == (TGT_VOCAB, 16)


@pytest.mark.parametrize("attention", ["dot", "general", "additive"])
def test_padding_does_not_change_logits(attention: str) -> None:
    model = make_model(attention=attention, encoder_layers=2, decoder_layers=2)
    generator = torch.Generator().manual_seed(2)
    sources = [random_ids(generator, n, SRC_VOCAB) for n in (3, 8, 5)]
    targets = [random_ids(generator, n, TGT_VOCAB) for n in (2, 4, 9)]

    with torch.no_grad():
        batched = teacher_forced_logits(model, *source_batch(sources), target_input(targets))
        for row, (source, target) in enumerate(zip(sources, targets)):
            alone = teacher_forced_logits(model, *source_batch([source]), target_input([target]))
            steps = len(target) + 1
            torch.testing.assert_close(batched[row, :steps], alone[0], atol=1e-5, rtol=0)


def test_step_log_probs_are_the_same_alone_and_batched() -> None:
    model = make_model(attention="general", decoder_layers=2)
    generator = torch.Generator().manual_seed(3)
    sources = [random_ids(generator, n, SRC_VOCAB) for n in (6, 2, 4)]
    prev_steps = [[BOS, BOS, BOS], random_ids(generator, 3, TGT_VOCAB), random_ids(generator, 3, TGT_VOCAB)]

    def run_steps(rows: list[int]) -> list[torch.Tensor]:
        source, state = model.encode(*source_batch([sources[row] for row in rows]))
        outputs = []
        for prev in prev_steps:
            log_probs, state, attention = model.step(torch.tensor([prev[row] for row in rows]), state, source)
            outputs.append(log_probs)
        return outputs

    with torch.no_grad():
        batched = run_steps([0, 1, 2])
        for row in range(3):
            for step, alone in enumerate(run_steps([row])):
                torch.testing.assert_close(batched[step][row], alone[0], atol=1e-5, rtol=0)
    assert torch.allclose(batched[0].exp().sum(dim=1), torch.ones(3))


def test_step_agrees_with_teacher_forced_forward() -> None:
    model = make_model(attention="additive", decoder_layers=2)
    generator = torch.Generator().manual_seed(4)
    src, src_len = source_batch([random_ids(generator, n, SRC_VOCAB) for n in (4, 6)])
    tgt_in = target_input([random_ids(generator, 3, TGT_VOCAB) for _ in range(2)])

    with torch.no_grad():
        expected = F.log_softmax(teacher_forced_logits(model, src, src_len, tgt_in), dim=-1)
        source, state = model.encode(src, src_len)
        for t in range(tgt_in.size(1)):
            log_probs, state, _ = model.step(tgt_in[:, t], state, source)
            torch.testing.assert_close(log_probs, expected[:, t], atol=1e-5, rtol=0)


def stepped_log_probs(model: object, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
    """Log-probs (B, T, V) of feeding tgt_in one step at a time, as search does."""
    with torch.no_grad():
        source, state = model.encode(src, src_len)
        steps = []
        for t in range(tgt_in.size(1)):
            log_probs, state, _ = model.step(tgt_in[:, t], state, source)
            steps.append(log_probs)
    return torch.stack(steps, dim=1)


def test_inference_model_looks_up_the_gates_it_would_compute() -> None:
    model = make_model().eval()
    generator = torch.Generator().manual_seed(3)
    src, src_len = source_batch([random_ids(generator, n, SRC_VOCAB) for n in (4, 6)])
    tgt_in = target_input([random_ids(generator, n, TGT_VOCAB) for n in (5, 2)])
    computed = stepped_log_probs(model, src, src_len, tgt_in)  # no table: W_e E y + b each step
    inference = InferenceModel(model)
    torch.testing.assert_close(stepped_log_probs(inference, src, src_len, tgt_in), computed, rtol=1e-5, atol=1e-6)

    # the table belongs to the weights it was built from: new weights need a new InferenceModel
    with torch.no_grad():  # as an optimizer step or a checkpoint load would
        model.decoder.embed_gates.weight.mul_(2.0)
        model.decoder.embed.weight[EOS + 1].add_(1.0)
    changed = stepped_log_probs(model, src, src_len, tgt_in)
    assert not torch.allclose(changed, computed)
    torch.testing.assert_close(
        stepped_log_probs(InferenceModel(model), src, src_len, tgt_in), changed, rtol=1e-5, atol=1e-6
    )

    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = InferenceModel(model)
        assert bf16.gate_table.dtype == torch.bfloat16  # as the products it replaces
        torch.testing.assert_close(stepped_log_probs(bf16, src, src_len, tgt_in), changed, rtol=1e-2, atol=3e-2)
    assert not hasattr(model.decoder, "_gate_table"), "the module keeps no hidden inference state"


def as_lstm_cells(decoder) -> list[torch.nn.LSTMCell]:
    """The decoder's layers as torch LSTMCells: the first one rebuilt from its split weights."""
    hidden = decoder.recurrent_gates.weight.size(0) // 4
    first = torch.nn.LSTMCell(decoder.embed.embedding_dim + hidden, hidden)
    recurrent = decoder.recurrent_gates.weight  # columns: [feed ; h]
    with torch.no_grad():
        first.weight_ih.copy_(torch.cat([decoder.embed_gates.weight, recurrent[:, :hidden]], dim=1))
        first.weight_hh.copy_(recurrent[:, hidden:])
        first.bias_ih.copy_(decoder.embed_gates.bias)
        first.bias_hh.zero_()
    return [first, *decoder.upper_cells]


def test_tanh_through_sigmoid_is_torch_tanh_in_value_and_gradient() -> None:
    x = torch.linspace(-12, 12, 20_001)
    torch.testing.assert_close(tanh(x), torch.tanh(x), atol=2e-7, rtol=0)
    torch.testing.assert_close(tanh(x.bfloat16()), torch.tanh(x.bfloat16()), atol=1e-7, rtol=0)
    wide = torch.randn(40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert torch.autograd.gradcheck(tanh, (wide,))
    (grad,) = torch.autograd.grad(tanh(x.requires_grad_()).sum(), x)
    torch.testing.assert_close(grad, 1 - torch.tanh(x.detach()) ** 2, atol=1e-6, rtol=0)
    half = x.detach().bfloat16().requires_grad_()
    (ours,) = torch.autograd.grad(tanh(half), half, torch.ones_like(half))
    (torchs,) = torch.autograd.grad(torch.tanh(half), half, torch.ones_like(half))
    torch.testing.assert_close(ours, torchs, atol=2**-8, rtol=0)  # one bf16 rounding, as torch's


def test_first_decoder_layer_matches_torch_lstm_cell() -> None:
    decoder = make_model(embed_size=12, hidden_size=16).decoder
    generator = torch.Generator().manual_seed(5)
    embedded = torch.randn(4, 12, generator=generator)
    feed, h, c = (torch.randn(4, 16, generator=generator) for _ in range(3))
    with torch.no_grad():
        gates = decoder.embed_gates(embedded) + decoder.recurrent_gates(torch.cat([feed, h], dim=1))
        split_h, split_c = lstm_cell(gates, c)
        cell_h, cell_c = as_lstm_cells(decoder)[0](torch.cat([embedded, feed], dim=1), (h, c))

    torch.testing.assert_close(split_h, cell_h, atol=1e-6, rtol=0)
    torch.testing.assert_close(split_c, cell_c, atol=1e-6, rtol=0)


def test_decoder_forward_matches_a_loop_of_lstm_cells() -> None:
    """The whole decoder, rebuilt step by step from torch modules, for one- and two-layer stacks."""
    for layers in (1, 2):
        model = make_model(decoder_layers=layers, attention="general")
        decoder = model.decoder
        cells = as_lstm_cells(decoder)
        generator = torch.Generator().manual_seed(6)
        src, src_len = source_batch([random_ids(generator, n, SRC_VOCAB) for n in (5, 2)])
        tgt_in = target_input([random_ids(generator, 3, TGT_VOCAB) for _ in range(2)])
        with torch.no_grad():
            source, state = model.encode(src, src_len)
            hidden, _, _ = decoder(tgt_in, state, source.memory, source.keys, source.mask)
            h, c, feed = list(state.h), list(state.c), state.feed
            for t in range(tgt_in.size(1)):
                layer_input = torch.cat([decoder.embed(tgt_in[:, t]), feed], dim=1)
                for layer, cell in enumerate(cells):
                    h[layer], c[layer] = cell(layer_input, (h[layer], c[layer]))
                    layer_input = h[layer]
                context, _ = decoder.attention(h[-1], source.keys, source.memory, source.mask)
                feed = torch.tanh(decoder.combine(torch.cat([context, h[-1]], dim=1)))
                torch.testing.assert_close(hidden[:, t], feed, atol=1e-6, rtol=0)


def attention_inputs(
    kind: str, seed: int = 7
) -> tuple[Attention, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    attention = Attention(kind, 8, 8)
    query, memory = torch.randn(3, 8), torch.randn(3, 5, 8)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False], [True, False, False, False, False]])
    return attention, query, attention.project_keys(memory), memory, mask


@pytest.mark.parametrize("kind", ["dot", "general", "additive"])
def test_attention_weights_are_zero_on_padding_and_sum_to_one(kind: str) -> None:
    attention, query, keys, memory, mask = attention_inputs(kind)
    with torch.no_grad():
        context, weights = attention(query, keys, memory, mask)

    assert weights.shape == (3, 5)
    assert context.shape == (3, 8)
    assert (weights[~mask] == 0).all()
    assert (weights[mask] > 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(3))
    torch.testing.assert_close(weights[2], torch.tensor([1.0, 0, 0, 0, 0]))
    # the context is the weighted sum of memory, whatever the scores
    torch.testing.assert_close(context, torch.einsum("bs,bsm->bm", weights, memory))


def test_attention_ignores_what_padding_positions_hold() -> None:
    attention, query, keys, memory, mask = attention_inputs("additive")
    garbage = memory.clone()
    garbage[~mask] = 1e3
    with torch.no_grad():
        expected = attention(query, keys, memory, mask)
        actual = attention(query, attention.project_keys(garbage), garbage, mask)
    torch.testing.assert_close(actual, expected)


def test_dot_attention_is_a_softmax_weighted_sum() -> None:
    attention, query, keys, memory, mask = attention_inputs("dot")
    context, weights = attention(query, keys, memory, mask)

    for row in range(3):
        real = memory[row, mask[row]]  # (S_row, M)
        expected_weights = torch.softmax(real @ query[row], dim=0)
        torch.testing.assert_close(weights[row, mask[row]], expected_weights)
        torch.testing.assert_close(context[row], expected_weights @ real)


@pytest.mark.parametrize("kind", ["dot", "general", "additive"])
def test_grouped_queries_attend_as_if_each_had_its_own_copy_of_the_source(kind: str) -> None:
    attention, _, keys, memory, mask = attention_inputs(kind)
    queries = torch.randn(3 * 4, 8)  # four hypotheses of each of the three sentences, sentence by sentence
    copies = torch.arange(3).repeat_interleave(4)
    with torch.no_grad():
        grouped = attention(queries, keys, memory, mask)
        copied = attention(queries, keys[copies], memory[copies], mask[copies])

    torch.testing.assert_close(grouped, copied)


def test_dot_attention_requires_equal_sizes() -> None:
    with pytest.raises(ValueError, match="equal sizes"):
        Attention("dot", 8, 6)


def test_encoded_source_index_select_reorders_rows() -> None:
    memory, keys = torch.arange(3 * 2 * 4.0).view(3, 2, 4), -torch.arange(3 * 2 * 4.0).view(3, 2, 4)
    mask = torch.tensor([[True, False], [True, True], [False, False]])
    order = torch.tensor([2, 0, 0, 1])

    picked = EncodedSource(memory, keys, mask).index_select(order)

    assert isinstance(picked, EncodedSource)
    assert torch.equal(picked.memory, memory[[2, 0, 0, 1]])
    assert torch.equal(picked.keys, keys[[2, 0, 0, 1]])
    assert torch.equal(picked.mask, mask[[2, 0, 0, 1]])


def test_decoder_state_index_select_reorders_batch_rows() -> None:
    layers, batch, hidden = 2, 3, 4
    h = torch.arange(layers * batch * hidden, dtype=torch.float).view(layers, batch, hidden)
    c, feed = h + 100, torch.arange(batch * hidden, dtype=torch.float).view(batch, hidden)
    order = torch.tensor([1, 1, 2, 0])

    picked = DecoderState(h, c, feed).index_select(order)

    assert isinstance(picked, DecoderState)
    # the batch is dim 1 of h and c (layers first) but dim 0 of feed
    assert torch.equal(picked.h, h[:, [1, 1, 2, 0]])
    assert torch.equal(picked.c, c[:, [1, 1, 2, 0]])
    assert torch.equal(picked.feed, feed[[1, 1, 2, 0]])


def loss_inputs(bias: bool = True) -> tuple[torch.Tensor, torch.nn.Linear, torch.Tensor]:
    """Output-layer inputs (3, 4, 5), the layer (5 -> 7) and targets (3, 4) with padding."""
    torch.manual_seed(8)
    hidden = torch.randn(3, 4, 5, requires_grad=True)
    output = torch.nn.Linear(5, 7, bias=bias)
    target = torch.tensor([[4, 5, 6, EOS], [5, EOS, PAD, PAD], [EOS, PAD, PAD, PAD]])
    return hidden, output, target


def torch_loss(hidden: torch.Tensor, output: torch.nn.Linear, target: torch.Tensor, eps: float) -> torch.Tensor:
    logits = output(hidden).flatten(0, 1)
    return F.cross_entropy(logits, target.flatten(), ignore_index=PAD, label_smoothing=eps, reduction="sum")


def test_loss_without_smoothing_is_summed_cross_entropy() -> None:
    hidden, output, target = loss_inputs()
    out = sequence_loss(hidden, output, target, label_smoothing=0.0)

    expected = torch_loss(hidden, output, target, eps=0.0)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.nll, expected)
    assert out.tokens == 7


def test_loss_ignores_whatever_sits_at_padding() -> None:
    hidden, output, target = loss_inputs()
    changed = hidden.detach().clone()
    changed[target == PAD] = torch.randn(int((target == PAD).sum()), 5) * 50
    for smoothing in (0.0, 0.2):
        original = sequence_loss(hidden, output, target, smoothing)
        altered = sequence_loss(changed, output, target, smoothing)
        torch.testing.assert_close(altered.loss, original.loss)
        torch.testing.assert_close(altered.nll, original.nll)


def test_loss_of_an_all_padding_row_is_zero() -> None:
    hidden, output, target = loss_inputs()
    out = sequence_loss(hidden[:1], output, torch.full_like(target[:1], PAD), label_smoothing=0.1)
    assert out.loss.item() == 0.0
    assert out.nll.item() == 0.0
    assert out.tokens == 0


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_label_smoothed_loss_matches_torch(eps: float) -> None:
    hidden, output, target = loss_inputs()
    out = sequence_loss(hidden, output, target, label_smoothing=eps)

    torch.testing.assert_close(out.loss, torch_loss(hidden, output, target, eps))
    # nll stays the unsmoothed likelihood, for perplexity
    torch.testing.assert_close(out.nll, torch_loss(hidden, output, target, eps=0.0))
    assert out.tokens == 7


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk_rows", [1, 5, 1024])
def test_loss_gradients_taken_chunk_by_chunk_match_autograd(chunk_rows: int, bias: bool) -> None:
    hidden, output, target = loss_inputs(bias)
    (3.0 * torch_loss(hidden, output, target, eps=0.2)).backward()  # a scaled loss, as training takes it
    expected = [tensor.grad.clone() for tensor in (hidden, *output.parameters())]
    for tensor in (hidden, *output.parameters()):
        tensor.grad = None

    (3.0 * sequence_loss(hidden, output, target, 0.2, chunk_rows).loss).backward()

    for tensor, grad in zip((hidden, *output.parameters()), expected):
        torch.testing.assert_close(tensor.grad, grad)


def test_loss_gradients_in_bf16_stay_close_to_fp32() -> None:
    hidden, output, target = loss_inputs()
    torch_loss(hidden, output, target, eps=0.1).backward()
    expected = [tensor.grad.clone() for tensor in (hidden, output.weight)]
    hidden.grad, output.weight.grad = None, None

    half = hidden.detach().bfloat16().requires_grad_()
    sequence_loss(half, output, target, 0.1, chunk_rows=4).loss.backward()

    assert half.grad.dtype == torch.bfloat16 and output.weight.grad.dtype == torch.float32
    torch.testing.assert_close(half.grad.float(), expected[0], atol=0.05, rtol=0.05)
    torch.testing.assert_close(output.weight.grad, expected[1], atol=0.05, rtol=0.05)


def test_loss_without_gradients_takes_none() -> None:
    hidden, output, target = loss_inputs()
    with torch.no_grad():
        out = sequence_loss(hidden, output, target, label_smoothing=0.1)
    assert not out.loss.requires_grad
    torch.testing.assert_close(out.loss, torch_loss(hidden, output, target, eps=0.1).detach())


def test_each_dropout_rate_is_its_own_or_model_dropout() -> None:
    cfg = ModelConfig(dropout=0.3, embed_dropout=0.1, attentional_dropout=0.0, encoder_layers=2, decoder_layers=2)
    assert cfg.dropouts() == Dropouts(embed=0.1, hidden=0.3, attentional=0.0)
    model = Seq2Seq(cfg, 20, 20)
    assert model.encoder.embed_dropout.p == model.decoder.embed_dropout.p == 0.1
    assert model.encoder.hidden_dropout.p == model.encoder.rnn.dropout == model.decoder.hidden_dropout.p == 0.3
    assert model.decoder.attentional_dropout.p == 0.0
    with pytest.raises(NmtError, match="model.hidden_dropout"):
        ModelConfig(hidden_dropout=1.0)


def test_attentional_dropout_alone_changes_only_what_the_decoder_feeds_forward() -> None:
    """With only attentional dropout, the encoder's states are untouched in training; with only
    embedding dropout they are not."""
    src = torch.tensor([[5, 6, 7, 8]])
    for rates, encoder_dropped in (({"attentional_dropout": 0.5}, False), ({"embed_dropout": 0.5}, True)):
        cfg = ModelConfig(embed_size=12, hidden_size=16, dropout=0.0, **rates)
        model = Seq2Seq(cfg, 20, 20)
        torch.manual_seed(0)
        trained = model.train().encoder(src, torch.tensor([4])).memory
        plain = model.eval().encoder(src, torch.tensor([4])).memory
        assert torch.equal(trained, plain) != encoder_dropped


def test_dropout_zeroes_a_fraction_p_scales_the_rest_and_passes_gradients_through_the_same_mask():
    torch.manual_seed(0)
    dropout = Dropout(0.3).train()
    x = torch.full((500, 400), 2.0, requires_grad=True)
    y = dropout(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.3) < 0.01
    assert torch.allclose(y[y != 0], torch.tensor(2.0 / 0.7))
    y.sum().backward()
    assert torch.equal(x.grad, (y.detach() != 0).float() / 0.7)
    torch.manual_seed(0)
    assert torch.equal(dropout(x), y)  # the seed fixes the mask
    assert dropout.eval()(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)


def test_word_dropout_turns_a_fraction_p_of_subwords_into_unk_and_spares_the_specials():
    torch.manual_seed(0)
    tokens = torch.randint(EOS + 1, 50, (400, 60))
    tokens[:, 0], tokens[:, -1], tokens[:5, 30:] = BOS, EOS, PAD
    dropped = word_dropout(tokens, 0.25)
    changed = dropped != tokens
    assert (dropped[changed] == UNK).all()
    assert not changed[:, 0].any() and not changed[:, -1].any() and not changed[:5, 30:].any()
    assert abs(changed[5:, 1:-1].float().mean().item() - 0.25) < 0.01


def test_word_dropout_acts_in_training_only():
    model = make_model(word_dropout=0.5)
    src, src_len = source_batch([[4, 5, 6, 7], [8, 9]])
    tgt_in = target_input([[10, 11, 12], [13]])
    evaluated = model(src, src_len, tgt_in)
    assert torch.equal(evaluated, model(src, src_len, tgt_in))
    model.train()
    for module in model.modules():  # no other randomness: only the words differ
        if isinstance(module, Dropout):
            module.p = 0.0
    torch.manual_seed(3)
    trained = model(src, src_len, tgt_in)
    torch.manual_seed(3)
    kept = word_dropout(src, 0.5), word_dropout(tgt_in, 0.5)
    assert not torch.equal(trained, evaluated)
    assert torch.allclose(trained, model.eval()(kept[0], src_len, kept[1]))
