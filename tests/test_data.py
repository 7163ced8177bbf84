from __future__ import annotations

import gzip

import numpy as np
import pyarrow as pa
import pytest
from conftest import collate, read_lines

from nmt.batching import epoch_batches, make_batch, plan_batches
from nmt.cache import prepare
from nmt.config import DataConfig
from nmt.corpus import load_split, read_parallel
from nmt.data import EncodedCorpus, IdColumn, filter_pairs
from nmt.errors import NmtError
from nmt.vocab import BOS, EOS, PAD


def corpus_of_lengths(src_len, tgt_len):
    return EncodedCorpus.from_lists(
        src_ids=[np.arange(4, 4 + n, dtype=np.int64) for n in src_len],
        tgt_ids=[np.arange(4, 4 + n, dtype=np.int64) for n in tgt_len],
        src_text=[f"s{i}" for i in range(len(src_len))],
        tgt_text=[f"t{i}" for i in range(len(tgt_len))],
    )


def reference_plan(src_len, tgt_len, batch_tokens, rng):
    """The batch planner as first written, one example at a time: what the numpy version must equal."""
    cost = np.maximum(src_len, tgt_len + 1)
    order = rng.permutation(len(cost))
    order = order[np.lexsort((src_len[order], tgt_len[order]))]
    batches, start, longest = [], 0, 0
    for position, index in enumerate(order):
        longest_with = max(longest, cost[index])
        if longest_with * (position - start + 1) > batch_tokens:
            batches.append(order[start:position])
            start, longest_with = position, cost[index]
        longest = longest_with
    if start < len(order):
        batches.append(order[start:])
    rng.shuffle(batches)
    return batches


def random_lengths(seed, size=500, high=60):
    rng = np.random.default_rng(seed)
    return rng.integers(1, high, size=size), rng.integers(1, high, size=size)


def batch_cost(src_len, tgt_len, batch):
    return len(batch) * max(src_len[batch].max(), tgt_len[batch].max() + 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch_tokens", [61, 200, 1500])
def test_plan_covers_every_example_once_within_budget(seed, batch_tokens):
    src_len, tgt_len = random_lengths(seed)
    batches = plan_batches(src_len, tgt_len, batch_tokens, np.random.default_rng(seed))
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(src_len)))
    assert all(len(batch) >= 1 for batch in batches)
    assert max(batch_cost(src_len, tgt_len, batch) for batch in batches) <= batch_tokens


def test_plan_groups_examples_of_similar_target_length_in_shuffled_order():
    src_len, tgt_len = random_lengths(3)
    batches = plan_batches(src_len, tgt_len, 400, np.random.default_rng(3))
    spans_in_order = [(tgt_len[b].min(), tgt_len[b].max()) for b in batches]
    spans = sorted(spans_in_order)
    assert spans_in_order != spans
    for (_, longest), (shortest, _) in zip(spans, spans[1:]):
        assert longest <= shortest


def test_plan_fills_batches_greedily():
    src_len = np.full(100, 10)
    tgt_len = np.full(100, 9)
    batches = plan_batches(src_len, tgt_len, 100, np.random.default_rng(0))
    assert sorted(len(b) for b in batches) == [10] * 10


@pytest.mark.parametrize(("seed", "batch_tokens", "high"), [(0, 61, 60), (1, 400, 60), (2, 4000, 100), (3, 50, 3)])
def test_numpy_plan_equals_the_one_example_at_a_time_reference(seed, batch_tokens, high):
    src_len, tgt_len = random_lengths(seed, size=3000, high=high)
    plan = plan_batches(src_len, tgt_len, batch_tokens, np.random.default_rng(seed))
    reference = reference_plan(src_len, tgt_len, batch_tokens, np.random.default_rng(seed))
    assert [batch.tolist() for batch in plan] == [batch.tolist() for batch in reference]


def test_plan_of_no_examples_is_empty():
    empty = np.zeros(0, dtype=np.int64)
    assert plan_batches(empty, empty, 10, np.random.default_rng(0)) == []


def test_epoch_plan_repeats_for_same_seed_and_epoch_and_changes_across_epochs():
    corpus = corpus_of_lengths(*random_lengths(4, size=300))
    first = epoch_batches(corpus, 300, seed=7, epoch=1)
    again = epoch_batches(corpus, 300, seed=7, epoch=1)
    next_epoch = epoch_batches(corpus, 300, seed=7, epoch=2)
    other_seed = epoch_batches(corpus, 300, seed=8, epoch=1)
    assert [b.tolist() for b in first] == [b.tolist() for b in again]
    assert [b.tolist() for b in first] != [b.tolist() for b in next_epoch]
    assert [b.tolist() for b in first] != [b.tolist() for b in other_seed]
    assert sorted(np.concatenate(next_epoch).tolist()) == list(range(len(corpus)))


def test_example_over_budget_raises():
    with pytest.raises(NmtError, match="batch_tokens=10"):
        plan_batches(np.array([3, 10]), np.array([3, 10]), 10, np.random.default_rng(0))


def test_target_bos_counts_towards_the_budget():
    assert len(plan_batches(np.array([10]), np.array([9]), 10, np.random.default_rng(0))) == 1
    with pytest.raises(NmtError):
        plan_batches(np.array([5]), np.array([10]), 10, np.random.default_rng(0))


def test_collate_adds_bos_and_eos_and_pads():
    src = [np.array([5, 6, 7]), np.array([8])]
    tgt = [np.array([9]), np.array([10, 11, 12])]
    batch = collate(src, tgt)
    assert batch.src.tolist() == [[5, 6, 7], [8, PAD, PAD]]
    assert batch.src_len.tolist() == [3, 1]
    assert batch.tgt_in.tolist() == [[BOS, 9, PAD, PAD], [BOS, 10, 11, 12]]
    assert batch.tgt_out.tolist() == [[9, EOS, PAD, PAD], [10, 11, 12, EOS]]
    assert batch.target_tokens == 6


def chunked_corpus(rows, chunk_sizes, lookup=None):
    """A corpus whose id columns are split into Arrow chunks, as the cache's worker files make them."""

    def column(side):
        chunks, start = [], 0
        for size in chunk_sizes:
            part = [row[side] for row in rows[start : start + size]]
            offsets = np.concatenate([[0], np.cumsum([len(ids) for ids in part])]).astype(np.int32)
            values = np.concatenate([np.zeros(0), *part]).astype(np.uint16)
            chunks.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)))
            start += size
        return IdColumn(pa.chunked_array(chunks), lookup)

    return EncodedCorpus(column(0), column(1))


def test_make_batch_from_chunked_columns_equals_collate_of_the_same_rows():
    rng = np.random.default_rng(6)
    rows = [(rng.integers(4, 60, size=n), rng.integers(4, 60, size=m)) for n, m in rng.integers(1, 25, (200, 2))]
    lookup = np.arange(60)[::-1].copy()  # stored id -> vocabulary id
    corpus = chunked_corpus(rows, [70, 1, 0, 129], lookup)
    assert corpus.src_len.tolist() == [len(src) for src, _ in rows]
    for indices in (np.array([0]), np.array([199, 3, 70, 71, 69, 150]), rng.permutation(200)[:57]):
        batch = make_batch(corpus, indices)
        expected = collate([lookup[rows[i][0]] for i in indices], [lookup[rows[i][1]] for i in indices])
        for name in ("src", "src_len", "tgt_in", "tgt_out"):
            assert torch_equal(getattr(batch, name), getattr(expected, name)), name
    assert corpus.tgt_ids[71].tolist() == lookup[rows[71][1]].tolist()


def torch_equal(a, b):
    return a.shape == b.shape and bool((a == b).all())


def test_collate_on_random_lengths_keeps_ids_and_shapes():
    rng = np.random.default_rng(5)
    src = [rng.integers(4, 50, size=n) for n in rng.integers(1, 20, size=16)]
    tgt = [rng.integers(4, 50, size=n) for n in rng.integers(1, 20, size=16)]
    batch = collate(src, tgt)
    assert batch.tgt_in.shape == batch.tgt_out.shape == (16, max(map(len, tgt)) + 1)
    assert (batch.tgt_in[:, 0] == BOS).all()
    for row, (s, t) in enumerate(zip(src, tgt)):
        assert batch.src_len[row] == len(s)
        assert batch.src[row, : len(s)].tolist() == s.tolist()
        assert (batch.src[row, len(s) :] == PAD).all()
        assert batch.tgt_in[row, 1 : len(t) + 1].tolist() == t.tolist()
        assert batch.tgt_out[row, : len(t) + 1].tolist() == [*t.tolist(), EOS]
        assert (batch.tgt_out[row, len(t) + 1 :] == PAD).all()
    assert batch.target_tokens == sum(len(t) + 1 for t in tgt)


LINES = ["Ein Hund läuft.", "", "Zwei Männer\rim Park.", "Ende"]


def test_read_lines_plain_and_gzip_give_the_same_lines(tmp_path):
    data = "\n".join(LINES).encode() + b"\n"
    (tmp_path / "a.txt").write_bytes(data)
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(data))
    assert read_lines(tmp_path / "a.txt") == LINES
    assert read_lines(tmp_path / "a.txt.gz") == LINES


def test_read_lines_strips_crlf_but_keeps_a_lone_carriage_return(tmp_path):
    (tmp_path / "crlf.txt").write_bytes(b"one\r\ntwo\rstill two\r\nthree\r\r\nfour")
    assert read_lines(tmp_path / "crlf.txt") == ["one", "two\rstill two", "three\r", "four"]


def test_read_lines_of_an_empty_file_is_empty(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    assert read_lines(tmp_path / "empty.txt") == []


def test_read_lines_names_file_and_line_of_invalid_utf8(tmp_path):
    path = tmp_path / "latin1.txt.gz"
    path.write_bytes(gzip.compress("fine\nstill fine\nMädchen\n".encode("latin-1")))
    with pytest.raises(NmtError, match=r"latin1\.txt\.gz:3: invalid UTF-8"):
        read_lines(path)


def test_read_lines_of_a_missing_file_names_it(tmp_path):
    with pytest.raises(NmtError, match="nowhere.txt: file not found"):
        read_lines(tmp_path / "nowhere.txt")


def test_read_lines_of_a_corrupt_gzip_raises_nmt_error(tmp_path):
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(NmtError, match="bad.gz: cannot read"):
        read_lines(tmp_path / "bad.gz")


def test_read_parallel_pairs_lines(tmp_path):
    (tmp_path / "x.en").write_text("a\nb\n", encoding="utf-8")
    (tmp_path / "x.de").write_text("A\nB\n", encoding="utf-8")
    pairs = read_parallel(tmp_path / "x.en", tmp_path / "x.de")
    assert pairs["src"] == ["a", "b"]
    assert pairs["tgt"] == ["A", "B"]


def test_read_parallel_with_different_lengths_names_both_files_and_counts(tmp_path):
    (tmp_path / "x.en").write_text("a\nb\nc\n", encoding="utf-8")
    (tmp_path / "x.de").write_text("A\nB\n", encoding="utf-8")
    with pytest.raises(NmtError) as raised:
        read_parallel(tmp_path / "x.en", tmp_path / "x.de")
    message = str(raised.value)
    assert f"{tmp_path / 'x.en'} has 3 lines" in message
    assert f"{tmp_path / 'x.de'} has 2" in message


@pytest.mark.parametrize(("src_lines", "tgt_lines"), [(3, 2), (2, 3), (1, 0), (0, 4)])
def test_parallel_files_of_any_different_lengths_name_both_counts(tmp_path, src_lines, tgt_lines):
    (tmp_path / "x.en").write_text("".join(f"s{i}\n" for i in range(src_lines)), encoding="utf-8")
    (tmp_path / "x.de").write_text("".join(f"t{i}\n" for i in range(tgt_lines)), encoding="utf-8")
    with pytest.raises(NmtError, match=f"x.en has {src_lines} lines, .*x.de has {tgt_lines};"):
        read_parallel(tmp_path / "x.en", tmp_path / "x.de")


def test_read_parallel_with_a_missing_file_names_it(tmp_path):
    (tmp_path / "x.en").write_text("a\n", encoding="utf-8")
    with pytest.raises(NmtError, match="x.de: file not found"):
        read_parallel(tmp_path / "x.en", tmp_path / "x.de")


def write_corpus(directory, prefix, src, tgt, gz=True):
    suffix = ".gz" if gz else ""
    for lang, lines in (("en", src), ("de", tgt)):
        data = ("\n".join(lines) + "\n").encode()
        (directory / f"{prefix}.{lang}{suffix}").write_bytes(gzip.compress(data) if gz else data)


def files_config(directory):
    return DataConfig(
        corpus="files", dir=str(directory), src_lang="en", tgt_lang="de", splits={"train": "train", "val": "valid"}
    )


def test_load_split_reads_gzip_files_through_split_aliases(tmp_path):
    write_corpus(tmp_path, "train", ["a b", "c"], ["A B", "C"])
    write_corpus(tmp_path, "valid", ["v"], ["V"])
    cfg = files_config(tmp_path)
    train = load_split(cfg, "train")
    assert (train["src"], train["tgt"]) == (["a b", "c"], ["A B", "C"])
    val = load_split(cfg, "val")
    assert (val["src"], val["tgt"]) == (["v"], ["V"])


def test_load_split_takes_an_unaliased_prefix_and_plain_files(tmp_path):
    write_corpus(tmp_path, "dev2024", ["x"], ["X"], gz=False)
    pairs = load_split(files_config(tmp_path), "dev2024")
    assert (pairs["src"], pairs["tgt"]) == (["x"], ["X"])


def test_load_split_prefers_gzip_over_plain(tmp_path):
    write_corpus(tmp_path, "train", ["gz"], ["GZ"])
    write_corpus(tmp_path, "train", ["plain"], ["PLAIN"], gz=False)
    assert load_split(files_config(tmp_path), "train")["src"] == ["gz"]


def test_load_split_of_a_missing_file_names_its_path(tmp_path):
    write_corpus(tmp_path, "train", ["a"], ["A"])
    with pytest.raises(NmtError, match=r"valid\.en\[\.gz\]: file not found"):
        load_split(files_config(tmp_path), "val")


def test_load_split_of_the_synthetic_corpus_is_reproducible():
    cfg = DataConfig(corpus="synthetic", synthetic_train_pairs=20, src_lang="src", tgt_lang="tgt")
    first, again = load_split(cfg, "train"), load_split(cfg, "train")
    assert len(first) == 20
    assert first["src"] == again["src"]
    assert len(load_split(cfg, "val")) == 500
    with pytest.raises(NmtError, match="'dev'"):
        load_split(cfg, "dev")


def test_filter_pairs_counts_empty_too_long_and_bad_ratio():
    corpus = corpus_of_lengths(
        src_len=[3, 0, 3, 0, 11, 3, 5, 9, 2, 10],
        tgt_len=[3, 3, 0, 0, 2, 11, 1, 3, 9, 10],
    )
    kept, report = filter_pairs(corpus, max_length=10, max_ratio=3.0)
    assert (report.kept, report.empty, report.too_long, report.bad_ratio) == (3, 3, 2, 2)
    assert kept.src_text == ["s0", "s7", "s9"]
    assert kept.tgt_text == ["t0", "t7", "t9"]
    assert [len(ids) for ids in kept.src_ids] == [3, 9, 10]
    assert [len(ids) for ids in kept.tgt_ids] == [3, 3, 10]


def test_prepare_synthetic_encodes_train_and_val(tmp_path):
    data = prepare(
        DataConfig(corpus="synthetic", synthetic_train_pairs=500, bpe_vocab_size=300, src_lang="src", tgt_lang="tgt"),
        cache_dir=tmp_path,
    )
    assert data.src_pipeline.bpe is data.tgt_pipeline.bpe
    assert data.src_pipeline.vocab_size <= 300
    assert len(data.train) == data.train_report.kept
    report = data.train_report
    assert report.kept + report.empty + report.too_long + report.bad_ratio == 500
    assert 450 <= len(data.train) <= 500
    assert len(data.val) == 500
    for corpus in (data.train, data.val):
        assert len(corpus.src_ids) == len(corpus.tgt_ids) == len(corpus.src_text) == len(corpus.tgt_text)
        assert all(len(ids) > 0 and ids.dtype == np.int64 for ids in [*corpus.src_ids, *corpus.tgt_ids])
    assert data.src_pipeline.decode(data.train.src_ids[0]) == data.train.src_text[0]
    assert data.tgt_pipeline.decode(data.val.tgt_ids[-1]) == data.val.tgt_text[-1]
