"""`nmt-serve`: the translation service (nmt/service.py) over HTTP, with uvicorn.

    nmt-serve -m runs/ende/checkpoints/best.pt --beam-size 5 --port 8000
    nmt-serve --config models.yaml          # models: {id: {checkpoints: [...], decode: {...}}}
The search flags are nmt-translate's (DecodeConfig's fields) and set the defaults of a model given
with -m; the service flags (ServeConfig's fields) set where it listens and its limits. SIGTERM or
SIGINT drains: /readyz turns 503, new requests get 503, accepted ones are answered, then it exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from nmt.config import DecodeConfig, ServeConfig, ServedModel, ServedModels, add_flags, from_flags
from nmt.errors import NmtError, exit_on_user_error

log = logging.getLogger("nmt.serve")


def parser() -> argparse.ArgumentParser:
    """nmt-serve's flags: the models, then one per ServeConfig and DecodeConfig field."""
    parser = argparse.ArgumentParser(
        prog="nmt-serve", description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    models = parser.add_argument_group("models").add_mutually_exclusive_group(required=True)
    models.add_argument("-m", "--model", type=Path, action="append", help="checkpoint (.pt); repeat to ensemble")
    models.add_argument("--config", type=Path, help="models.yaml: several models by id, each with decode settings")
    parser.add_argument("--model-id", default="default", help="the id of the model given with -m")
    add_flags(parser, ServeConfig, "service (nmt.config.ServeConfig)")
    add_flags(parser, DecodeConfig, "search and inference defaults of -m (nmt.config.DecodeConfig)")
    return parser


def served_models(args: argparse.Namespace) -> ServedModels:
    if args.model:
        decode = from_flags(args, DecodeConfig)
        return ServedModels({args.model_id: ServedModel([str(path) for path in args.model], decode)})
    from omegaconf import OmegaConf  # only for --config
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(ServedModels), OmegaConf.load(args.config))
        return OmegaConf.to_object(merged)
    except FileNotFoundError:
        raise NmtError(f"{args.config}: file not found") from None
    except (OmegaConfBaseException, ValueError) as error:
        first_line = str(error).splitlines()[0]
        raise NmtError(f"{args.config}: not a models file ({first_line}); see nmt-serve --help") from None
    except NmtError as error:
        raise NmtError(f"{args.config}: {error}") from None


def serve(args: argparse.Namespace) -> int:
    try:  # only the service needs them: the [serve] extra
        import uvicorn

        from nmt.service import create_app
    except ImportError as error:
        raise NmtError(
            f'nmt-serve needs {error.name}, which is not installed: pip install -e ".[serve]" in a checkout'
        ) from None

    cfg = from_flags(args, ServeConfig)
    cfg = dataclasses.replace(cfg, api_key=cfg.api_key or os.environ.get("NMT_API_KEY", ""))
    models = served_models(args)
    exit_code = 0

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, but a first SIGTERM/SIGINT drains before it stops."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            if state.draining:  # a second signal: stop now
                super().handle_exit(sig, frame)
                return
            log.info("draining: answering the %d requests in flight, refusing new ones", state.in_flight)
            state.draining = True
            threading.Thread(target=self.stop_when_drained, daemon=True).start()

        def stop_when_drained(self) -> None:
            while state.in_flight:
                time.sleep(0.02)
            self.should_exit = True

    def fatal(message: str) -> None:
        nonlocal exit_code
        exit_code = 1
        server.should_exit = True

    app, state = create_app(models, cfg, on_fatal=fatal)
    server = DrainingServer(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="info", access_log=False))
    server.run()
    return exit_code


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(exit_on_user_error(lambda: serve(args)))


if __name__ == "__main__":
    main()
