"""The commands in README.md and docs/*.md work as written: every `python -m nmt.*`, `nmt-translate`
and `nmt-serve` line of a fenced shell block is checked against the code. Hydra overrides (nmt.train,
nmt.evaluate, nmt.prepare) are composed into the schema and turned into objects, as the entry point
would; flags of the other commands are parsed by their own argparse parsers. Paths and checkpoint
names are placeholders, never opened. The Python snippet of docs/guide.md runs against a real
checkpoint and must translate as nmt-translate does."""

from __future__ import annotations

import argparse
import ast
import io
import re
import shlex
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import hydra
import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from nmt import average, checkpoint, plot, serve, shortlist, synthetic, translate
from nmt.config import DataConfig, DecodeConfig, ModelConfig, ServeConfig, from_flags, register_configs
from nmt.errors import NmtError
from nmt.model import Seq2Seq
from nmt.tokenization import MosesText, TextPipeline, learn_bpe
from nmt.vocab import Vocabulary

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
HYDRA_ENTRIES = {"nmt.train": "train", "nmt.evaluate": "evaluate", "nmt.prepare": "prepare"}
ARGPARSE_ENTRIES: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "nmt.translate": translate.parser,
    "nmt.serve": serve.parser,
    "nmt.average": average.parser,
    "nmt.plot": plot.parser,
    "nmt.synthetic": synthetic.parser,
    "nmt.shortlist": shortlist.parser,
}
CONSOLE_SCRIPTS = {"nmt-translate": "nmt.translate", "nmt-serve": "nmt.serve"}
HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p"}
HYDRA_FLAGS = {"-m", "--multirun", "--info", "--help", "-h"}


class WrongCommand(Exception):
    """A flag the program does not take, or a program that does not exist."""


def shell_blocks(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of each fenced shell block, continuation lines joined, heredoc bodies left out."""
    fence, heredoc_end, pending, start = None, None, "", 0
    for number, line in enumerate(text.splitlines(), start=1):
        if fence is None:
            match = re.match(r"\s*(```+)\s*(\w*)", line)
            if match and match.group(2) in SHELL_BLOCKS:
                fence = match.group(1)
            elif match:
                fence = "skip:" + match.group(1)
            continue
        if line.strip() == fence.removeprefix("skip:"):
            fence = None
            continue
        if fence.startswith("skip:"):
            continue
        if heredoc_end is not None:
            heredoc_end = None if line.strip() == heredoc_end else heredoc_end
            continue
        start = start if pending else number
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        heredoc = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", pending)
        heredoc_end = heredoc.group(1) if heredoc else None
        yield start, pending
        pending = ""


def simple_commands(line: str, variables: dict[str, str]) -> Iterator[list[str]]:
    """The words of each simple command of a shell line: split at | ; && ||, comments, redirections
    and leading VAR=value assignments left out, $(...) as one placeholder word, $VAR expanded from
    `variables` (assignments made earlier in the same block)."""
    line = re.sub(r"\$\((?:[^()]|\([^()]*\))*\)", "SUBSTITUTED", line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words: list[str] = []
    tokens = iter(lexer)
    for token in tokens:
        if token in ("|", ";", "&&", "||", "&"):
            yield from _command(words, variables)
            words = []
        elif token.strip("&") in (">", ">>", "<"):
            next(tokens, None)  # the file redirected to or from
        else:
            words.append(token)
    yield from _command(words, variables)


def _command(words: list[str], variables: dict[str, str]) -> Iterator[list[str]]:
    assignments = 0
    while assignments < len(words) and re.fullmatch(r"[A-Za-z_]\w*=.*", words[assignments]):
        assignments += 1
    if assignments == len(words):  # only assignments: remember them for later lines of the block
        variables.update(word.split("=", 1) for word in words)
        return
    expanded = []
    for word in words[assignments:]:
        name = re.fullmatch(r"\$\{?(\w+)\}?", word)
        expanded.extend(variables[name.group(1)].split() if name and name.group(1) in variables else [word])
    yield expanded


def nmt_invocation(words: list[str]) -> tuple[str, list[str]] | None:
    """(module, its arguments) when the command runs nmt: python -m nmt.X, torchrun ... -m nmt.X,
    nmt-translate or nmt-serve; None for any other program."""
    program = Path(words[0]).name
    if program in CONSOLE_SCRIPTS:
        return CONSOLE_SCRIPTS[program], words[1:]
    if re.fullmatch(r"python[\d.]*|\$\(PYTHON\)|torchrun", program) and "-m" in words:
        module_at = words.index("-m") + 1
        if module_at < len(words) and re.fullmatch(r"nmt(\.\w+)*", words[module_at]):
            return words[module_at], words[module_at + 1 :]
    return None


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(file:line, module, arguments) of every nmt command in the docs' shell blocks."""
    found = []
    for path in DOCS:
        variables: dict[str, str] = {}
        for number, line in shell_blocks(path.read_text(encoding="utf-8")):
            for words in simple_commands(line, variables):
                invocation = nmt_invocation(words)
                if invocation:
                    found.append((f"{path.relative_to(REPO)}:{number}", *invocation))
    return found


def hydra_overrides(arguments: list[str]) -> list[list[str]]:
    """The override lists to compose for a command line of a Hydra entry point: Hydra's own flags
    checked and dropped; with a sweep (a=1,2), one list per value of each swept key."""
    overrides, words = [], iter(arguments)
    for word in words:
        if word in HYDRA_FLAGS_WITH_VALUE:
            next(words)
        elif word.startswith("-") and word not in HYDRA_FLAGS:
            raise WrongCommand(f"{word}: not a flag of a Hydra entry point")
        elif not word.startswith("-"):
            overrides.append(word)
    choices = [
        [f"{o.get_key_element()}={value}" for value in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [o.input_line]
        for o in OverridesParser.create().parse_overrides(overrides)
    ]
    first = [options[0] for options in choices]
    lists = [first]
    for at, options in enumerate(choices):
        lists += [[*first[:at], option, *first[at + 1 :]] for option in options[1:]]
    return lists


def check(module: str, arguments: list[str]) -> None:
    """Raises if the command would fail at its first step: composing its config or parsing its flags."""
    if module in HYDRA_ENTRIES:
        register_configs()
        with hydra.initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            for overrides in hydra_overrides(arguments):
                OmegaConf.to_object(hydra.compose(config_name=HYDRA_ENTRIES[module], overrides=overrides))
    elif module in ARGPARSE_ENTRIES:
        parsed = _parse(ARGPARSE_ENTRIES[module](), arguments)
        schemas = {"nmt.translate": [DecodeConfig], "nmt.serve": [DecodeConfig, ServeConfig]}.get(module, [])
        for schema in schemas if parsed else []:
            from_flags(parsed, schema)  # the values too: --beam-size 0 fails here
    else:
        raise WrongCommand(f"{module}: no such entry point (or add it to tests/test_docs.py)")


def _parse(parser: argparse.ArgumentParser, arguments: list[str]) -> argparse.Namespace | None:
    """argparse's result; None for --help; WrongCommand with argparse's message where it would exit."""
    messages = io.StringIO()
    try:
        with redirect_stdout(messages), redirect_stderr(messages):
            return parser.parse_args(arguments)
    except SystemExit as exit:
        if exit.code == 0:
            return None
        raise WrongCommand(messages.getvalue().strip().splitlines()[-1]) from None


COMMANDS = documented_commands()


def test_the_docs_hold_the_commands_of_every_entry_point():
    per_file = {path.relative_to(REPO).as_posix(): 0 for path in DOCS}
    for where, _, _ in COMMANDS:
        per_file[where.split(":")[0]] += 1
    assert per_file["README.md"] >= 25 and per_file["docs/recipes.md"] >= 20 and per_file["docs/guide.md"] >= 10
    assert {module for _, module, _ in COMMANDS} >= {*HYDRA_ENTRIES, *ARGPARSE_ENTRIES}


@pytest.mark.parametrize(("where", "module", "arguments"), COMMANDS, ids=[where for where, _, _ in COMMANDS])
def test_documented_command_composes_or_parses(where: str, module: str, arguments: list[str]):
    check(module, arguments)


def test_documented_training_on_a_real_corpus_chooses_its_training_settings():
    """The train group by default is the built-in corpus's (a 4-minute budget, lr 3e-3, 1,500-token
    batches): a command training on other data names train=..., an experiment, or its own budget."""
    careless = [
        f"{where}: {shlex.join(arguments)}"
        for where, module, arguments in COMMANDS
        if module == "nmt.train"
        for overrides in hydra_overrides(arguments)[:1]
        if any(re.match(r"data=(?!default)", o) for o in overrides)
        and not any(re.match(r"(train|experiment)=|train\.max_minutes=", o) for o in overrides)
    ]
    assert not careless, "these train on a real corpus with the built-in corpus's train group:\n" + "\n".join(careless)


@pytest.mark.parametrize(
    "line",
    [
        "python -m nmt.train model.hiden_size=512",  # misspelled key
        "python -m nmt.train experiment=multi30k_ened",  # no such option of a group
        "torchrun --nproc_per_node=2 -m nmt.train train.bogus=1 hydra.run.dir=runs/x",
        "python -m nmt.train -m train.lr=0.001,fast",  # one bad value in a sweep
        "python -m nmt.train --cgf job",  # misspelled Hydra flag
        "python -m nmt.train data=files",  # a required value missing
        "python -m nmt.evaluate checkpoint=a.pt decode.beam_sise=5",
        "python -m nmt.prepare data=hub",
        "nmt-translate -m a.pt --beam-sise 5",  # misspelled flag
        "cat in.txt | nmt-translate -m a.pt --beam-size 0 > out.txt",  # impossible value
        "nmt-serve -m a.pt --prot 8000",
        "python -m nmt.average a.pt b.pt",  # -o missing
        "python -m nmt.trian",  # no such module
    ],
)
def test_a_wrong_command_fails_the_check(line: str):
    commands = [invocation for words in simple_commands(line, {}) if (invocation := nmt_invocation(words))]
    assert len(commands) == 1
    with pytest.raises((ConfigCompositionException, NmtError, WrongCommand)):
        check(*commands[0])


def test_commands_are_found_in_shell_blocks_as_the_shell_reads_them():
    text = """
Prose with `python -m nmt.train not.a.command=1`.

```bash
FILES="data=files data.dir=c"
python -m nmt.train $FILES \\
    train=bench   # a comment
python - <<'PY'
print("python -m nmt.train inside a heredoc")
PY
zcat x.gz | nmt-translate -m $(ls runs/*/best.pt | head -1) --beam-size 2 > out && NMT_DEBUG=1 nmt-serve -m a.pt
```

```python
import os  # python -m nmt.train in a Python block
```
"""
    variables: dict[str, str] = {}
    found = [
        (number, invocation)
        for number, line in shell_blocks(text)
        for words in simple_commands(line, variables)
        if (invocation := nmt_invocation(words))
    ]
    assert found == [
        (6, ("nmt.train", ["data=files", "data.dir=c", "train=bench"])),
        (11, ("nmt.translate", ["-m", "SUBSTITUTED", "--beam-size", "2"])),
        (11, ("nmt.serve", ["-m", "a.pt"])),
    ]


@pytest.fixture(scope="module")
def fr_en_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A French->English checkpoint of an untrained small model, made in a second: the snippet
    needs a system to load, and nmt-translate is the oracle of what it must print."""
    text = {"fr": ["Un chien court dans le parc .", "Deux hommes jouent aux échecs ."], "en": ["A dog runs ."]}
    pipelines = {}
    for lang, lines in text.items():
        moses = MosesText(lang)
        tokens = [" ".join(moses.tokenize(line)) for line in lines]
        bpe = learn_bpe(tokens, 40, 1)
        segmented = [found.tokens for found in bpe.encode_batch([t.split() for t in tokens], is_pretokenized=True)]
        pipelines[lang] = TextPipeline(lang, bpe, Vocabulary.build(segmented))
    torch.manual_seed(0)
    model_cfg, data_cfg = ModelConfig(embed_size=16, hidden_size=32), DataConfig(src_lang="fr", tgt_lang="en")
    model = Seq2Seq(model_cfg, pipelines["fr"].vocab_size, pipelines["en"].vocab_size)
    path = tmp_path_factory.mktemp("fr_en") / "best.pt"
    checkpoint.save(path, checkpoint.make(model, model_cfg, data_cfg, pipelines["fr"], pipelines["en"], step=0))
    return path


def test_the_python_snippet_of_the_guide_translates_as_nmt_translate_does(
    fr_en_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    guide = (REPO / "docs" / "guide.md").read_text(encoding="utf-8")
    snippet = next(block for block in re.findall(r"```python\n(.*?)```", guide, re.S) if "from_checkpoints" in block)
    documented_path = re.search(r'Path\("([^"]+\.pt)"\)', snippet).group(1)
    lines = ast.literal_eval(re.search(r"\.translate\((\[.*?\])\)", snippet).group(1))
    exec(snippet.replace(documented_path, str(fr_en_checkpoint)), {})
    printed = capsys.readouterr().out
    (tmp_path / "input.txt").write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    translate.main(["-m", str(fr_en_checkpoint), "-i", str(tmp_path / "input.txt"), "--quiet"])
    assert printed == capsys.readouterr().out and len(printed.splitlines()) == len(lines) >= 2
