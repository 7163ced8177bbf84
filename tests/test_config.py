from __future__ import annotations

import argparse
import os
import re
from dataclasses import asdict, fields
from pathlib import Path

import hydra
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from nmt.config import (
    MBR_KEYS,
    SAMPLING_KEYS,
    SHORTLIST_KEYS,
    VALIDATION_OVERRIDES,
    Config,
    DataConfig,
    DecodeConfig,
    EvaluateConfig,
    ModelConfig,
    TrainConfig,
    add_flags,
    from_flags,
    register_configs,
)
from nmt.errors import NmtError

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
GROUPS = ("data", "model", "train", "decode", "experiment")
REQUIRED_VALUES = {
    ("data", "files"): ["data.dir=/corpus", "data.src_lang=fr", "data.tgt_lang=it"],
    ("data", "hub"): ["data.hub_name=wmt14", "data.hub_config=de-en", "data.src_lang=en", "data.tgt_lang=de"],
}
GROUP_OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]


def compose(config_name="train", overrides=()):
    register_configs()
    with hydra.initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra.compose(config_name=config_name, overrides=list(overrides))


def test_every_group_has_options():
    assert {group for group, _ in GROUP_OPTIONS} == set(GROUPS)
    assert ("data", "multi30k") in GROUP_OPTIONS
    assert ("experiment", "multi30k_ende") in GROUP_OPTIONS


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_option_of_every_group_composes_into_the_schema(group, option):
    overrides = [f"{group}={option}", *REQUIRED_VALUES.get((group, option), [])]
    cfg = OmegaConf.to_object(compose(overrides=overrides))
    assert isinstance(cfg, Config)
    assert isinstance(cfg.data, DataConfig)
    assert isinstance(cfg.model, ModelConfig)
    assert isinstance(cfg.train, TrainConfig)
    assert isinstance(cfg.decode, DecodeConfig)
    if group != "experiment":
        option_values = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml"))
        chosen = {key: value for key, value in option_values.items() if value != "???"}
        composed = asdict(getattr(cfg, group))
        assert {key: composed[key] for key in chosen} == chosen


def test_defaults_use_the_builtin_corpus_and_small_model():
    cfg = OmegaConf.to_object(compose())
    assert cfg.data.corpus == "synthetic"
    assert (cfg.data.src_lang, cfg.data.tgt_lang) == ("src", "tgt")
    assert cfg.model.hidden_size == 256
    assert cfg.train.max_minutes == 4.0


def test_files_corpus_takes_its_required_values_and_split_names():
    cfg = OmegaConf.to_object(compose(overrides=["data=files", *REQUIRED_VALUES["data", "files"]]))
    assert (cfg.data.corpus, cfg.data.dir, cfg.data.src_lang, cfg.data.tgt_lang) == ("files", "/corpus", "fr", "it")
    assert cfg.data.splits == {"train": "train", "val": "valid", "test": "test"}


@pytest.mark.parametrize(("option", "key"), [("files", "data.dir"), ("hub", "data.hub_name")])
def test_corpus_without_its_location_fails_naming_the_key(option, key):
    with pytest.raises(NmtError, match=key):
        OmegaConf.to_object(compose(overrides=[f"data={option}"]))


def test_files_corpus_takes_its_languages_from_overrides():
    cfg = OmegaConf.to_object(
        compose(overrides=["data=files", "data.dir=/corpus", "data.src_lang=fr", "data.tgt_lang=en"])
    )
    assert (cfg.data.corpus, cfg.data.dir, cfg.data.src_lang, cfg.data.tgt_lang) == ("files", "/corpus", "fr", "en")


def test_experiment_multi30k_ende_selects_data_model_and_train():
    cfg = OmegaConf.to_object(compose(overrides=["experiment=multi30k_ende", "data.dir=/elsewhere"]))
    assert cfg.data.corpus == "files"
    assert cfg.data.dir == "/elsewhere"
    assert (cfg.data.src_lang, cfg.data.tgt_lang) == ("en", "de")
    assert cfg.data.splits["test"] == "test_2016_flickr"
    assert cfg.data.bpe_vocab_size == 8000
    assert (cfg.model.embed_size, cfg.model.hidden_size, cfg.model.dropout) == (256, 512, 0.3)
    assert (cfg.train.batch_tokens, cfg.train.lr, cfg.train.max_epochs) == (4000, 0.001, 32)
    assert (cfg.train.precision, cfg.train.schedule, cfg.train.max_minutes) == ("bf16", "plateau", 88)


@pytest.mark.parametrize(("alias", "langs"), [("multi30k_ende", ("en", "de")), ("multi30k_deen", ("de", "en"))])
def test_the_pair_recipes_are_the_one_multi30k_recipe_with_their_languages(alias, langs):
    """One recipe for every pair: an alias adds its languages and nothing else."""
    languages = [f"data.src_lang={langs[0]}", f"data.tgt_lang={langs[1]}"]
    assert compose(overrides=[f"experiment={alias}"]) == compose(overrides=["experiment=multi30k", *languages])
    other_pair = OmegaConf.to_object(compose(overrides=["experiment=multi30k", "data.src_lang=fr", "data.tgt_lang=cs"]))
    assert (other_pair.data.src_lang, other_pair.data.tgt_lang) == ("fr", "cs")


def test_evaluate_config_composes_with_a_checkpoint():
    cfg = OmegaConf.to_object(compose("evaluate", ["checkpoint=runs/x/checkpoints/best.pt", "decode.beam_size=3"]))
    assert isinstance(cfg, EvaluateConfig)
    assert cfg.checkpoint == "runs/x/checkpoints/best.pt"
    assert cfg.split == "test"
    assert cfg.data.corpus == "synthetic"
    assert cfg.decode.beam_size == 3


@pytest.mark.parametrize(
    ("config_name", "key", "parent"),
    [("train", "run", "runs"), ("train", "sweep", "runs/multirun"), ("evaluate", "run", "runs/eval")],
)
def test_default_output_folders_hold_the_microsecond_and_the_process_id(config_name, key, parent):
    register_configs()
    with hydra.initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        folders = [hydra.compose(config_name, return_hydra_config=True).hydra[key].dir for _ in range(2)]
    pattern = rf"{parent}/\d{{4}}-\d\d-\d\d_\d\d-\d\d-\d\d\.\d{{6}}_{os.getpid()}"
    assert all(re.fullmatch(pattern, folder) for folder in folders), folders
    assert folders[0] != folders[1]  # composed microseconds apart


def test_evaluate_config_without_checkpoint_fails():
    with pytest.raises(NmtError, match="checkpoint or checkpoints must be given"):
        OmegaConf.to_object(compose("evaluate"))


def test_evaluate_config_takes_an_ensemble_and_every_decode_key():
    overrides = ["checkpoints=[a.pt,b.pt]", "decode.quantize=int8", "decode.precision=bf16", "decode.nbest=3"]
    cfg = OmegaConf.to_object(compose("evaluate", overrides))
    assert cfg.models == ["a.pt", "b.pt"] and (cfg.decode.quantize, cfg.decode.precision) == ("int8", "bf16")
    with pytest.raises(NmtError, match="checkpoint or checkpoints"):
        OmegaConf.to_object(compose("evaluate", ["checkpoint=a.pt", "checkpoints=[b.pt]"]))


def non_default_value(name: str) -> object:
    """A valid value other than DecodeConfig's default for each of its keys."""
    special = {
        "nbest": 2, "precision": "bf16", "quantize": "int8", "device": "cuda", "sampling_topp": 0.5,
        "sampling_epsilon": 0.02, "mbr_utility": "chrf",
    }  # fmt: skip
    if name in special:
        return special[name]
    default = getattr(DecodeConfig(), name)
    return not default if isinstance(default, bool) else default + 1


def enabling(name: str) -> dict[str, object]:
    """The setting a decode key needs to take another value than its default: the sampling keys
    shape sampling, the MBR keys MBR, the shortlist keys the shortlist."""
    if name in SAMPLING_KEYS:
        return {"sampling": True}
    if name in MBR_KEYS:
        return {"mbr_utility": "chrf"}
    return {"shortlist": True} if name in SHORTLIST_KEYS else {}


def test_every_decode_key_is_a_translate_flag_with_its_help():
    """nmt-translate's search flags are DecodeConfig's fields: a field added there is a flag."""
    parser = argparse.ArgumentParser()
    add_flags(parser, DecodeConfig, "decode")
    flags = {action.dest: action for action in parser._actions if action.dest != "help"}
    assert set(flags) == {item.name for item in fields(DecodeConfig)}
    assert all(action.help for action in flags.values())
    for item in fields(DecodeConfig):
        value = non_default_value(item.name)
        if item.name == "nbest":
            argv = ["--nbest", "2"]
        elif isinstance(value, bool):
            argv = [f"--{item.name.replace('_', '-')}" if value else f"--no-{item.name.replace('_', '-')}"]
        else:
            argv = [f"--{item.name.replace('_', '-')}", str(value)]
        for key, needed in enabling(item.name).items():  # refused without it
            argv += [f"--{key.replace('_', '-')}"] if needed is True else [f"--{key.replace('_', '-')}", str(needed)]
        parsed = from_flags(parser.parse_args(argv), DecodeConfig)
        assert getattr(parsed, item.name) == value


def test_a_bad_decode_value_fails_alike_from_flags_and_from_hydra():
    parser = argparse.ArgumentParser()
    add_flags(parser, DecodeConfig, "decode")
    with pytest.raises(NmtError) as from_cli:
        from_flags(parser.parse_args(["--beam-size", "0"]), DecodeConfig)
    with pytest.raises(NmtError) as from_hydra:
        OmegaConf.to_object(compose(overrides=["decode.beam_size=0"]))
    assert str(from_cli.value) == str(from_hydra.value) == "config: decode.beam_size must be >= 1"


@pytest.mark.parametrize("key", [item.name for item in fields(DecodeConfig)])
def test_training_uses_every_decode_key_for_validation_or_rejects_it(key):
    """No decode.* key is silently ignored by nmt.train: validation searches with it, or training
    refuses it naming the key."""
    value = non_default_value(key)
    try:
        cfg = OmegaConf.to_object(compose(overrides=[f"decode.{key}={value}"]))
    except NmtError as error:
        assert key in VALIDATION_OVERRIDES or enabling(key)  # sampling and MBR keys need what enables them
        assert f"decode.{key}" in str(error)
        return
    assert key not in VALIDATION_OVERRIDES
    assert getattr(cfg.validation_decode(), key) == value


def test_sampling_and_shortlist_settings_without_their_switch_are_refused():
    with pytest.raises(NmtError, match="decode.temperature must be left at its default without decode.sampling"):
        DecodeConfig(temperature=0.5)
    assert DecodeConfig(sampling=True, temperature=0.5).temperature == 0.5
    with pytest.raises(NmtError, match="decode.shortlist_frequent must be left at its default without decode.short"):
        DecodeConfig(shortlist_frequent=10)
    assert DecodeConfig(shortlist=True, shortlist_frequent=10).shortlist_frequent == 10
    with pytest.raises(NmtError, match=r"decode.shortlist_per_source must be in \[1, 100\]"):
        DecodeConfig(shortlist=True, shortlist_per_source=101)


def test_training_refuses_a_validation_search_it_cannot_run():
    with pytest.raises(NmtError, match="decode.precision must be fp32 or bf16 on the CPU"):
        OmegaConf.to_object(compose(overrides=["train.precision=fp16"]))


def test_validation_searches_with_valid_beam_size_and_training_precision():
    cfg = OmegaConf.to_object(
        compose(overrides=["train.valid_beam_size=4", "train.precision=bf16", "decode.length_penalty=0.6"])
    )
    search = cfg.validation_decode()
    assert (search.beam_size, search.precision, search.length_penalty, search.nbest) == (4, "bf16", 0.6, 1)


def test_yaml_files_hold_only_what_differs_from_the_dataclass_defaults():
    """Else editing a default in nmt/config.py would change nothing where the YAML repeats it."""
    schemas = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "decode": DecodeConfig}
    for group, schema in schemas.items():
        defaults = asdict(schema())
        for path in sorted((CONF / group).glob("*.yaml")):
            values = OmegaConf.to_container(OmegaConf.load(path)) or {}
            repeated = [key for key, value in values.items() if defaults.get(key) == value]
            assert not repeated, f"{path.relative_to(REPO)} repeats the defaults of {repeated}"


@pytest.mark.parametrize(
    "override",
    ["model.hiden_size=3", "model.hidden_size=abc", "train.lr=fast", "decode.beam_size=2.5", "data.joint_bpe=maybe"],
)
def test_unknown_key_or_wrong_type_fails_at_compose_time(override):
    with pytest.raises(ConfigCompositionException):
        compose(overrides=[override])


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model.hidden_size=0"], "model.hidden_size"),
        (["model.hidden_size=255"], "model.hidden_size"),
        (["model.attention=cosine"], "model.attention"),
        (["model.dropout=1.0"], "model.dropout"),
        (["model.word_dropout=-0.1"], "model.word_dropout"),
        (["decode.beam_size=0"], "decode.beam_size"),
        (["decode.beam_size=4", "decode.nbest=5"], "decode.nbest"),
        (["train.lr=-1"], "train.lr"),
        (["train.optimizer=adagrad"], "train.optimizer"),
        (["train.momentum=0.9"], "train.momentum"),
        (["train.optimizer=sgd", "train.momentum=1.0"], "train.momentum"),
        (["train.weight_decay=-0.1"], "train.weight_decay"),
        (["train.max_epochs=0", "train.max_minutes=0"], "train.max_epochs, train.max_steps or train.max_minutes"),
        (["train.precision=fp8"], "train.precision"),
        (["data.corpus=bogus"], "data.corpus"),
        (["data.tgt_lang=src"], "data.tgt_lang"),
        (["data.bpe_vocab_size=4"], "data.bpe_vocab_size"),
        (["data.joint_bpe=false", "data.joint_vocab=true"], "data.joint_vocab"),
        (["data.bpe_dropout=1.0"], "data.bpe_dropout"),
        (["model.share_embeddings=true"], "model.share_embeddings"),
        (["~data.splits.val"], "data.splits.val"),
    ],
)
def test_impossible_value_raises_nmt_error_naming_the_key(overrides, key):
    cfg = compose(overrides=overrides)
    with pytest.raises(NmtError) as raised:
        OmegaConf.to_object(cfg)
    assert type(raised.value) is NmtError
    assert str(raised.value).startswith(f"config: {key} must be")


def test_readme_table_of_decode_options_is_the_dataclass():
    """README's table of search options, row for row as DecodeConfig defines them."""
    defaults = DecodeConfig()
    rows = [
        f"| `{name}` | `--{name.replace('_', '-')}` | `{getattr(defaults, name)}` | {help_text} |"
        for name, help_text in ((item.name, item.metadata["help"]) for item in fields(DecodeConfig))
    ]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    header = "| `decode.*` key | `nmt-translate` flag | default | meaning |\n|---|---|---|---|\n"
    assert header + "\n".join(rows) + "\n" in readme, "README's decode table should read:\n" + header + "\n".join(rows)


class Built(Exception):
    """Raised by a stand-in engine to hand back the config it was built with."""


@pytest.mark.parametrize("key", [item.name for item in fields(DecodeConfig)])
def test_evaluate_builds_its_engine_with_every_decode_key(key, monkeypatch):
    """No decode.* key is silently ignored by nmt.evaluate: each reaches Translator.from_checkpoints."""
    from nmt import evaluate

    def capture(paths, cfg):
        raise Built(cfg)

    monkeypatch.setattr(evaluate.Translator, "from_checkpoints", capture)
    value = non_default_value(key)
    overrides = [f"decode.{key}={value}", *(f"decode.{name}={needed}" for name, needed in enabling(key).items())]
    cfg = OmegaConf.to_object(compose("evaluate", ["checkpoint=a.pt", *overrides]))
    with pytest.raises(Built) as built:
        evaluate.run(cfg, Path("unused"))
    assert getattr(built.value.args[0], key) == value and built.value.args[0] == cfg.decode


@pytest.mark.parametrize(
    ("settings", "rows"),
    [
        ({"beam_size": 5}, 5),
        ({"beam_size": 5, "sampling": True}, 1),  # a draw is one row, whatever the beam
        ({"mbr_utility": "chrf", "mbr_candidates": 16}, 16),  # the candidates' beam
        ({"mbr_utility": "chrf", "mbr_candidates": 16, "mbr_samples": 12}, 12),  # the draws, searched after a beam of 4
    ],
)
def test_search_rows_count_what_a_sentence_holds_in_a_batch(settings, rows):
    assert DecodeConfig(**settings).search_rows() == rows


@pytest.mark.parametrize(
    "settings", [{"sampling": True}, {"mbr_utility": "chrf", "mbr_samples": 4}, {"device": "cuda"}]
)
def test_streams_are_refused_where_batch_order_or_the_device_decides(settings):
    with pytest.raises(NmtError, match="decode.streams"):
        DecodeConfig(streams=2, **settings)
