"""`python -m nmt.evaluate`: translate a test set with a system and score it with sacrebleu.

    python -m nmt.evaluate checkpoint=runs/ende/checkpoints/best.pt data=multi30k split=test
    python -m nmt.evaluate checkpoints=[a.pt,b.pt] decode.quantize=int8 source=test.en reference=test.de
The system is what `nmt-translate` runs with the same options (decode.* are its flags): one
checkpoint or an ensemble, any precision, quantization and search. Writes `hypotheses.txt` (with
decode.nbest > 1 also `nbest.txt`, Moses n-best format) and `report.json` to the run dir and
prints the scores with their signatures.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nmt import metrics
from nmt.config import EvaluateConfig, register_configs
from nmt.corpus import load_split, read_parallel
from nmt.errors import LineError, NmtError, exit_on_user_error
from nmt.files import atomic_output, check_distinct
from nmt.tokenization import MosesText
from nmt.translator import Translator, format_translations

log = logging.getLogger(__name__)


def score(hypotheses: list[str], references: list[str], tgt_lang: str, tokenized_lc: bool) -> dict[str, Any]:
    bleu, bleu_signature = metrics.bleu(hypotheses, references)
    chrf, chrf_signature = metrics.chrf(hypotheses, references)
    report: dict[str, Any] = {"bleu": bleu, "signature": bleu_signature, "chrf": chrf, "chrf_signature": chrf_signature}
    if tokenized_lc:
        report["bleu_tok_lc"], report["signature_tok_lc"] = metrics.tokenized_lowercase_bleu(
            hypotheses, references, MosesText(tgt_lang)
        )
    return report


def run(cfg: EvaluateConfig, out_dir: Path) -> dict[str, Any]:
    paths = [Path(path) for path in cfg.models]
    translator = Translator.from_checkpoints(paths, cfg.decode)
    langs = (translator.src_pipeline.moses.lang, translator.tgt_pipeline.moses.lang)
    if cfg.source:
        pairs = read_parallel(Path(cfg.source), Path(cfg.reference))
        label = cfg.source
    else:
        if (cfg.data.src_lang, cfg.data.tgt_lang) != langs:
            raise NmtError(
                f"{paths[0]} translates {langs[0]}->{langs[1]} but the data config is "
                f"{cfg.data.src_lang}->{cfg.data.tgt_lang}; pick the matching data= config"
            )
        pairs = load_split(cfg.data, cfg.split)
        label = f"split {cfg.split}"
    start = time.monotonic()
    try:
        results = translator.translate(pairs["src"])
    except LineError as error:
        raise NmtError(f"{label}:{error.index + 1}: {error.reason}") from None
    seconds = time.monotonic() - start
    hypotheses = [hyps[0].text for hyps in results]
    report = {
        **score(hypotheses, pairs["tgt"], langs[1], cfg.tokenized_lc),
        "sentences": len(hypotheses),
        "seconds": seconds,
        "sentences_per_second": len(hypotheses) / seconds if seconds else 0.0,
        "checkpoints": [str(path) for path in paths],
        "split": "" if cfg.source else cfg.split,
        "source": cfg.source,
        "reference": cfg.reference,
        "decode": asdict(cfg.decode),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = [Path(cfg.source), Path(cfg.reference)] if cfg.source else []
    for name in ("hypotheses.txt", "nbest.txt", "report.json"):
        check_distinct(out_dir / name, [*inputs, *paths])
    with atomic_output(out_dir / "hypotheses.txt") as file:
        file.write("".join(f"{h}\n" for h in hypotheses))
    if cfg.decode.nbest > 1:
        with atomic_output(out_dir / "nbest.txt") as file:
            file.write(format_translations(results, cfg.decode.nbest))
    with atomic_output(out_dir / "report.json") as file:
        file.write(json.dumps(report, indent=2) + "\n")
    return report


register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(dict_cfg: DictConfig) -> float:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    report = exit_on_user_error(lambda: run(OmegaConf.to_object(dict_cfg), out_dir))
    log.info("BLEU %.2f  %s", report["bleu"], report["signature"])
    log.info("chrF %.2f  %s", report["chrf"], report["chrf_signature"])
    if "bleu_tok_lc" in report:
        log.info("BLEU (tokenized, lowercased) %.2f  %s", report["bleu_tok_lc"], report["signature_tok_lc"])
    log.info("%d sentences in %.1f s; report %s", report["sentences"], report["seconds"], out_dir / "report.json")
    return report["bleu"]


if __name__ == "__main__":
    main()
