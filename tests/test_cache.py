"""The prepared-corpus cache: built once, reused, rebuilt when its inputs change, never trusted half-built;
its batches equal those of a plain in-memory reference on the same data."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import collate

from nmt import cache, checkpoint, encoding
from nmt.batching import epoch_batches, make_batch
from nmt.cache import prepare
from nmt.config import DataConfig
from nmt.corpus import read_parallel
from nmt.data import EncodedCorpus, filter_pairs
from nmt.errors import NmtError
from nmt.model import Seq2Seq
from nmt.synthetic import generate_split
from nmt.tokenization import MosesText, learn_bpe

REPO = Path(__file__).resolve().parents[1]


def write_split(folder: Path, split: str, src: list[str], tgt: list[str]) -> None:
    for lang, lines in (("en", src), ("de", tgt)):
        (folder / f"{split}.{lang}.gz").write_bytes(gzip.compress("".join(f"{line}\n" for line in lines).encode()))


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    """A small files corpus (the synthetic language pair) with an overlong and an empty pair."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    src, tgt = generate_split("train", 1200, 7)
    src[5], tgt[9] = " ".join(["word"] * 60), ""
    write_split(folder, "train", src, tgt)
    write_split(folder, "valid", *generate_split("val", 1200, 7))
    return folder


def files_config(folder: Path, **overrides: object) -> DataConfig:
    settings = {"bpe_vocab_size": 300, "max_length": 40, "splits": {"train": "train", "val": "valid"}, **overrides}
    return DataConfig(corpus="files", dir=str(folder), **settings)


def entries(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir())


def test_second_preparation_reuses_the_entry_and_gives_the_same_data(corpus_dir, tmp_path):
    cfg = files_config(corpus_dir)
    first = prepare(cfg, cache_dir=tmp_path / "cache")
    again = prepare(cfg, cache_dir=tmp_path / "cache")
    assert first.built and not again.built
    assert again.cache == first.cache and entries(tmp_path / "cache") == [first.cache.name]
    assert again.src_pipeline.vocab.pieces == first.src_pipeline.vocab.pieces
    assert [ids.tolist() for ids in again.train.tgt_ids] == [ids.tolist() for ids in first.train.tgt_ids]
    meta = json.loads((first.cache / "meta.json").read_text())
    assert meta["splits"]["train"]["pairs"] == 1200 and meta["pairs_per_second"] > 0


def test_preparing_a_corpus_again_in_another_cache_gives_the_same_bpe_and_ids(corpus_dir, tmp_path):
    """A fixed seed reproduces a run on another machine, which prepares the corpus anew."""
    cfg = files_config(corpus_dir)
    first, again = (prepare(cfg, cache_dir=tmp_path / name) for name in ("cache", "elsewhere"))
    assert again.built and again.src_pipeline.bpe.to_str() == first.src_pipeline.bpe.to_str()
    assert [ids.tolist() for ids in again.train.src_ids] == [ids.tolist() for ids in first.train.src_ids]


def test_changing_bpe_size_or_data_rebuilds_while_length_filters_reuse(corpus_dir, tmp_path):
    root = tmp_path / "cache"
    base = prepare(files_config(corpus_dir), cache_dir=root)
    bigger = prepare(files_config(corpus_dir, bpe_vocab_size=400), cache_dir=root)
    assert bigger.built and bigger.cache != base.cache
    assert base.src_pipeline.vocab_size < bigger.src_pipeline.vocab_size
    looser = prepare(files_config(corpus_dir, max_length=1000, max_length_ratio=100.0), cache_dir=root)
    assert not looser.built and looser.cache == base.cache
    assert (looser.train_report.too_long, base.train_report.too_long) == (0, 1)
    src, tgt = generate_split("train", 1000, 8)
    write_split(corpus_dir, "train", src, tgt)
    changed = prepare(files_config(corpus_dir), cache_dir=root)
    assert changed.built and changed.cache not in (base.cache, bigger.cache)
    assert changed.train.src_text[:3] == src[:3]
    assert len(entries(root)) == 3


def test_a_joint_vocabulary_holds_both_sides_pieces_and_encodes_them_alike(corpus_dir, tmp_path):
    separate = prepare(files_config(corpus_dir), cache_dir=tmp_path / "cache")
    joint = prepare(files_config(corpus_dir, joint_vocab=True), cache_dir=tmp_path / "cache")
    assert joint.built and joint.cache != separate.cache
    assert joint.src_pipeline.vocab.pieces == joint.tgt_pipeline.vocab.pieces
    pieces = set(joint.src_pipeline.vocab.pieces)
    assert set(separate.src_pipeline.vocab.pieces) | set(separate.tgt_pipeline.vocab.pieces) <= pieces
    assert len(pieces) % 8 == 0
    for side in ("src", "tgt"):  # the same text, other ids: what each vocabulary numbers it
        ours, theirs = getattr(joint, f"{side}_pipeline"), getattr(separate, f"{side}_pipeline")
        assert [ours.pieces(ids) for ids in getattr(joint.train, f"{side}_ids")[:50]] == [
            theirs.pieces(ids) for ids in getattr(separate.train, f"{side}_ids")[:50]
        ]


def reference_corpus(cfg: DataConfig, split: str, pipelines) -> EncodedCorpus:
    """The split encoded line by line in memory, through the same path as translation."""
    pairs = read_parallel(corpus_file(cfg, split, cfg.src_lang), corpus_file(cfg, split, cfg.tgt_lang))
    src_ids = pipelines[0].encode(pairs["src"])
    tgt_ids = pipelines[1].encode(pairs["tgt"])
    return EncodedCorpus.from_lists(src_ids, tgt_ids, pairs["src"], pairs["tgt"])


def corpus_file(cfg: DataConfig, split: str, lang: str) -> Path:
    return Path(cfg.dir) / f"{cfg.splits[split]}.{lang}.gz"


def test_batches_from_the_cache_equal_those_of_an_in_memory_reference(corpus_dir, tmp_path):
    cfg = files_config(corpus_dir)
    data = prepare(cfg, cache_dir=tmp_path / "cache")
    pipelines = (data.src_pipeline, data.tgt_pipeline)
    reference, report = filter_pairs(reference_corpus(cfg, "train", pipelines), cfg.max_length, cfg.max_length_ratio)
    assert report == data.train_report and (report.empty, report.too_long) == (1, 1)
    assert data.train.src_text == reference.src_text
    for epoch in (1, 2):
        plan = epoch_batches(data.train, 700, seed=3, epoch=epoch)
        assert [b.tolist() for b in plan] == [b.tolist() for b in epoch_batches(reference, 700, seed=3, epoch=epoch)]
        for indices in plan:
            batch = make_batch(data.train, indices)
            expected = collate([reference.src_ids[i] for i in indices], [reference.tgt_ids[i] for i in indices])
            for name in ("src", "src_len", "tgt_in", "tgt_out"):
                assert getattr(batch, name).equal(getattr(expected, name)), name
    val = reference_corpus(cfg, "val", pipelines)
    assert [ids.tolist() for ids in data.val.src_ids] == [ids.tolist() for ids in val.src_ids]
    assert data.val.tgt_text == val.tgt_text


def test_worker_processes_write_the_same_entry_as_one_process(corpus_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(encoding, "PAIRS_PER_PROCESS", 300)
    one = prepare(files_config(corpus_dir, joint_bpe=False, num_proc=1), cache_dir=tmp_path / "one")
    two = prepare(files_config(corpus_dir, joint_bpe=False, num_proc=2), cache_dir=tmp_path / "two")
    assert len(json.loads((two.cache / "meta.json").read_text())["splits"]["train"]["ids"]) == 2
    assert two.cache.name == one.cache.name  # the number of processes is not part of the key
    assert two.tgt_pipeline.vocab.pieces == one.tgt_pipeline.vocab.pieces
    assert [ids.tolist() for ids in two.train.src_ids] == [ids.tolist() for ids in one.train.src_ids]
    plan = epoch_batches(two.train, 500, seed=1, epoch=1)
    assert all(make_batch(two.train, b).tgt_out.equal(make_batch(one.train, b).tgt_out) for b in plan)


def test_a_failed_build_leaves_nothing_and_a_killed_one_is_cleaned_up(corpus_dir, tmp_path, monkeypatch):
    root = tmp_path / "cache"
    cfg = files_config(corpus_dir)
    name = cache.entry_name(cfg, cache.key_inputs(cfg))
    root.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    abandoned = root / f".build-{name}-{socket.gethostname()}-{dead.stdout.strip()}-x1"
    (abandoned / "train").mkdir(parents=True)
    alive = root / f".build-{name}-{socket.gethostname()}-{os.getpid()}-x2"
    alive.mkdir()

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(encoding, "_vocabulary", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, cache_dir=root)
    assert entries(root) == [alive.name]  # the dead process's leftover is gone, nothing half-built remains
    monkeypatch.undo()
    assert prepare(cfg, cache_dir=root).built and (root / name / "meta.json").exists()


def test_build_folders_untouched_for_a_day_are_removed_whatever_their_settings(tmp_path):
    root = tmp_path / "cache"
    abandoned, busy, recent = (root / f".build-other.en-de-{n}-otherhost-7{n}-abc{n}" for n in range(3))
    for folder in (abandoned, busy):
        (folder / "train").mkdir(parents=True)
        (folder / "train" / "ids.arrow").write_bytes(b"ids")
    recent.mkdir()
    two_days_ago = time.time() - 2 * 24 * 3600
    for path in (abandoned / "train" / "ids.arrow", abandoned / "train", abandoned, busy / "train", busy):
        os.utime(path, (two_days_ago, two_days_ago))  # busy's ids.arrow was written just now
    data = prepare(DataConfig(synthetic_train_pairs=300, bpe_vocab_size=100, num_proc=1), cache_dir=root)
    assert entries(root) == sorted([data.cache.name, busy.name, recent.name])


PREPARE_WHEN_TOLD = """
import json, logging, os, sys, time
from pathlib import Path
from nmt.cache import prepare
from nmt.config import DataConfig
logging.basicConfig(level=logging.INFO)
folder = Path(sys.argv[1])
(folder / f"ready-{os.getpid()}").touch()
while not (folder / "go").exists():
    time.sleep(0.01)
cfg = DataConfig(synthetic_train_pairs=300, bpe_vocab_size=100, num_proc=1)
data = prepare(cfg, cache_dir=folder / "cache")
print(json.dumps({"built": data.built, "cache": str(data.cache)}))
"""


def test_processes_preparing_one_corpus_at_once_build_it_once(tmp_path):
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", PREPARE_WHEN_TOLD, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(),
        )
        for _ in range(2)
    ]
    while len(list(tmp_path.glob("ready-*"))) < 2:
        assert all(process.poll() is None for process in processes), [p.communicate()[1] for p in processes]
        time.sleep(0.01)
    (tmp_path / "go").touch()  # both have imported everything: they ask for the entry within milliseconds
    finished = [process.communicate(timeout=300) for process in processes]
    assert all(process.returncode == 0 for process in processes), [stderr for _, stderr in finished]
    results = [json.loads(stdout) for stdout, _ in finished]
    assert sorted(result["built"] for result in results) == [False, True]
    waited = next(stderr for (_, stderr), result in zip(finished, results) if not result["built"])
    assert "another process is preparing this corpus; waiting for it" in waited
    assert results[0]["cache"] == results[1]["cache"]
    assert entries(tmp_path / "cache") == [Path(results[0]["cache"]).name]  # no lock file, no build folder


def test_an_entry_finished_first_by_another_process_is_used(corpus_dir, tmp_path):
    cfg = files_config(corpus_dir)
    theirs = prepare(cfg, cache_dir=tmp_path / "cache").cache
    cache._build(theirs, cfg, cache.key_inputs(cfg), None)  # our build of the same entry loses the rename
    assert entries(tmp_path / "cache") == [theirs.name]
    assert prepare(cfg, cache_dir=tmp_path / "cache").train_report.kept == 1198


def test_a_damaged_entry_says_what_to_do(corpus_dir, tmp_path):
    cfg = files_config(corpus_dir)
    entry = prepare(cfg, cache_dir=tmp_path / "cache").cache
    (entry / "train" / "ids.arrow").unlink()
    with pytest.raises(NmtError, match=rf"{entry.name}: this prepared corpus is damaged .*delete the folder"):
        prepare(cfg, cache_dir=tmp_path / "cache")


def test_an_unwritable_cache_dir_names_it(corpus_dir, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(NmtError, match=r"file/cache: cannot keep prepared corpora there.*data.cache_dir"):
        prepare(files_config(corpus_dir), cache_dir=tmp_path / "file" / "cache")


def test_a_checkpoints_pipelines_reuse_the_entry_they_were_learned_with(corpus_dir, tmp_path):
    cfg = files_config(corpus_dir)
    data = prepare(cfg, cache_dir=tmp_path / "cache")
    model = Seq2Seq(tiny_model(), data.src_pipeline.vocab_size, data.tgt_pipeline.vocab_size)
    state = checkpoint.make(model, tiny_model(), cfg, data.src_pipeline, data.tgt_pipeline)
    resumed = prepare(cfg, checkpoint.pipelines(state), cache_dir=tmp_path / "cache")
    assert not resumed.built and resumed.cache == data.cache
    other = prepare(files_config(corpus_dir, bpe_vocab_size=200, joint_bpe=False), cache_dir=tmp_path / "other")
    given = (other.src_pipeline, other.tgt_pipeline)
    encoded = prepare(cfg, given, cache_dir=tmp_path / "cache")
    assert encoded.built and encoded.cache != data.cache and encoded.src_pipeline is other.src_pipeline
    assert encoded.train.src_ids[0].tolist() == other.src_pipeline.encode([encoded.train.src_text[0]])[0]
    assert encoded.tgt_pipeline.vocab_size == other.tgt_pipeline.vocab_size


def tiny_model():
    from nmt.config import ModelConfig

    return ModelConfig(embed_size=8, hidden_size=8)


def test_bpe_is_learned_on_a_bounded_seeded_sample(corpus_dir, tmp_path, monkeypatch):
    tokens = datasets.Dataset.from_dict({"src_tok": [f"w{i}" for i in range(100)], "tgt_tok": ["x"] * 100})
    sample = encoding._sample(tokens, 30, seed=4)
    assert len(sample) == 30 and sample["src_tok"] == encoding._sample(tokens, 30, seed=4)["src_tok"]
    assert sample["src_tok"] != encoding._sample(tokens, 30, seed=5)["src_tok"]
    assert sorted(sample["src_tok"], key=lambda word: int(word[1:])) == sample["src_tok"]  # corpus order
    assert len(encoding._sample(tokens, 0, seed=4)) == len(encoding._sample(tokens, 500, seed=4)) == 100
    learned_on = []

    def learn(lines, vocab_size, min_frequency):
        learned_on.append(list(lines))
        return learn_bpe(learned_on[-1], vocab_size, min_frequency)

    monkeypatch.setattr(encoding, "learn_bpe", learn)
    cfg = files_config(corpus_dir, bpe_sample_size=50, bpe_sample_seed=9)
    prepare(cfg, cache_dir=tmp_path / "cache")
    pairs = read_parallel(corpus_file(cfg, "train", "en"), corpus_file(cfg, "train", "de"))
    chosen = np.sort(np.random.default_rng(9).choice(len(pairs), size=50, replace=False))
    src, tgt = MosesText("en"), MosesText("de")
    expected = [src.tokenize(pairs["src"][i]) for i in chosen] + [tgt.tokenize(pairs["tgt"][i]) for i in chosen]
    assert learned_on == [[" ".join(tokens) for tokens in expected]]
    prepare(files_config(corpus_dir), cache_dir=tmp_path / "cache")
    assert len(learned_on[1]) == 2 * len(pairs)


def test_a_streamed_corpus_learns_bpe_on_a_uniform_seeded_sample(tmp_path, monkeypatch):
    pairs = {"src": [f"s{i}" for i in range(40)], "tgt": [f"t{i}" for i in range(40)]}

    def chunks(size):
        return ({side: lines[i : i + size] for side, lines in pairs.items()} for i in range(0, 40, size))

    sample = encoding._reservoir(chunks(7), 10, seed=3)
    assert len(sample["src"]) == 10 and [t.replace("t", "s") for t in sample["tgt"]] == sample["src"]
    assert sorted(sample["src"], key=lambda word: int(word[1:])) == sample["src"]  # corpus order
    assert encoding._reservoir(chunks(3), 10, seed=3) == sample != encoding._reservoir(chunks(7), 10, seed=4)
    assert encoding._reservoir(chunks(7), 0, seed=3) == encoding._reservoir(chunks(7), 50, seed=3) == pairs
    drawn = Counter(word for seed in range(2000) for word in encoding._reservoir(chunks(5), 10, seed)["src"])
    assert all(abs(drawn[word] / 2000 - 10 / 40) < 0.05 for word in pairs["src"])  # each pair in 1 sample of 4

    learned_on = []
    monkeypatch.setattr(
        encoding, "learn_bpe", lambda lines, *sizes: learned_on.append(list(lines)) or learn_bpe(learned_on[-1], *sizes)
    )
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    train, val = generate_split("train", 400, 3), generate_split("val", 50, 3)
    write_hub_folder(tmp_path / "hub", train, val)
    hub = {"corpus": "hub", "hub_name": str(tmp_path / "hub"), "splits": {"train": "train", "val": "validation"}}
    prepare(DataConfig(**hub, streaming=True, bpe_sample_size=50, bpe_sample_seed=9, bpe_vocab_size=300))
    chosen = encoding._reservoir([{"src": train[0], "tgt": train[1]}], 50, seed=9)
    src, tgt = MosesText("en"), MosesText("de")
    expected = [" ".join(src.tokenize(line)) for line in chosen["src"]]
    assert learned_on == [expected + [" ".join(tgt.tokenize(line)) for line in chosen["tgt"]]]


def write_hub_folder(folder: Path, train: tuple[list[str], list[str]], val: tuple[list[str], list[str]]) -> None:
    """A dataset folder the way the hub serves one: jsonl files with a translation column."""
    folder.mkdir()
    for name, (src, tgt) in (("train", train), ("validation", val)):
        rows = (json.dumps({"translation": {"en": s, "de": t}}) for s, t in zip(src, tgt))
        (folder / f"{name}.jsonl").write_text("\n".join(rows) + "\n")


def test_a_streamed_hub_corpus_encodes_like_the_same_corpus_in_files(corpus_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    train, val = generate_split("train", 400, 3), generate_split("val", 400, 3)
    write_hub_folder(tmp_path / "hub", train, val)
    write_split(corpus_dir, "train", *train)
    write_split(corpus_dir, "valid", *val)
    files = prepare(files_config(corpus_dir), cache_dir=tmp_path / "cache")
    hub = {"corpus": "hub", "hub_name": str(tmp_path / "hub"), "splits": {"train": "train", "val": "validation"}}
    hub |= {"bpe_vocab_size": 300, "max_length": 40}
    for streaming in (False, True):
        data = prepare(DataConfig(**hub, streaming=streaming), cache_dir=tmp_path / "cache")
        assert data.built and data.src_pipeline.vocab.pieces == files.src_pipeline.vocab.pieces
        assert [ids.tolist() for ids in data.train.tgt_ids] == [ids.tolist() for ids in files.train.tgt_ids]
        assert data.val.tgt_text == val[1]
    assert not (data.cache / "train" / "text.arrow").exists()
    with pytest.raises(NmtError, match="keeps no text"):
        data.train.src_text  # noqa: B018 - the property is what is tested


def test_a_hub_dataset_that_cannot_be_reached_says_what_to_do(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wmt14' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    cfg = DataConfig(corpus="hub", hub_name="wmt14", hub_config="de-en", streaming=True)
    with pytest.raises(
        NmtError, match=r"hub dataset 'wmt14' \(config 'de-en', split '\w+'\): cannot load it.*data=files"
    ):
        prepare(cfg, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_an_empty_validation_split_prepares(corpus_dir, tmp_path):
    (corpus_dir / "valid.en.gz").write_bytes(gzip.compress(b""))
    (corpus_dir / "valid.de.gz").write_bytes(gzip.compress(b""))
    data = prepare(files_config(corpus_dir), cache_dir=tmp_path)
    assert len(data.val) == 0 and len(data.train) == 1198


def test_prepare_command_builds_then_reuses(tmp_path):
    command = [sys.executable, "-m", "nmt.prepare", "data.synthetic_train_pairs=500", f"data.cache_dir={tmp_path}"]
    first = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300, env=environment())
    assert first.returncode == 0, first.stderr
    assert "prepared 1,000 pairs" in first.stdout and "pairs/s" in first.stdout
    second = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300, env=environment())
    assert second.stdout.startswith("reused ") and str(tmp_path) in second.stdout
    assert [path.name for path in tmp_path.iterdir()] == [
        path.name for path in tmp_path.iterdir() if "synthetic" in path.name
    ]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_bench_data_prints_every_figure_for_each_size(multi30k_dir):
    command = [
        sys.executable,
        "scripts/bench_data.py",
        "--pairs",
        "500",
        "1200",
        "--num-proc",
        "1",
        "train.batch_tokens=800",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [run["pairs"] for run in report["runs"]] == [500, 1200]
    for run in report["runs"]:
        assert run["prepare"]["built"] and not run["startup"]["built"] and not run["epoch"]["built"]
        assert run["prepare"]["pairs"] == run["pairs"] + 1014  # Multi30k's validation split comes along
        assert run["prepare"]["pairs_per_second"] > 0 and run["cache_mb"] > 0
        assert run["startup"]["startup_seconds"] > 0 and run["epoch"]["plan_seconds"] >= 0
        assert run["epoch"]["batches"] >= run["epoch"]["training_pairs"] * 5 // 800
        assert all(run[phase]["peak_rss_mb"] > 0 for phase in ("prepare", "startup", "epoch"))
    assert set(report["peak_rss_growth_mb"]) == {"prepare", "startup", "epoch"}
