"""Command line: ``streamclf run``, ``check-config``, ``evaluate``, ``serve``, ``--version``.

Exit codes: 0 normal end, 1 invalid config, 2 model could not be loaded, 3 a worker thread died
(``Pipeline.run``) or tritonserver stopped (``serve``); ``evaluate`` adds its own
(``streamclf/evaluate/command.py``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Callable

from streamclf import __version__

if TYPE_CHECKING:
    from streamclf.backend import Classifier
    from streamclf.config import ModelConfig, ServeConfig

    ClassifierFactory = Callable[[ModelConfig], Classifier]

log = logging.getLogger("streamclf")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamclf",
                                description="Zero-shot CLIP classification of camera streams to MQTT.")
    p.add_argument("--version", action="version", version=f"streamclf {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_text in (("run", "run the daemon"), ("check-config", "validate a config file and exit"),
                            ("evaluate", "score the config's labels on labelled footage and suggest thresholds"),
                            ("serve", "serve the model to nodes on NVIDIA Triton (a config with model: and serve:)")):
        s = sub.add_parser(name, help=help_text)
        default = "serve.yaml" if name == "serve" else "config.yaml"
        s.add_argument("-c", "--config", default=default, help=f"config file (default: {default})")
        s.add_argument("--log-level", default=os.environ.get("STREAMCLF_LOG_LEVEL",
                                                             "WARNING" if name == "evaluate" else "INFO"))
        s.add_argument("--log-format", choices=("text", "json"), default="text")
        if name == "evaluate":
            from streamclf.evaluate.command import add_arguments

            add_arguments(s)
    s = sub.add_parser("export", help="write a Triton model repository of serve.yaml's model, for a stock Triton")
    s.add_argument("-c", "--config", default="serve.yaml", help="serve config file (default: serve.yaml)")
    s.add_argument("out_dir", help="the model repository directory (its model directories are replaced)")
    s.add_argument("--log-level", default=os.environ.get("STREAMCLF_LOG_LEVEL", "INFO"))
    s.add_argument("--log-format", choices=("text", "json"), default="text")
    return p


def _load(path: str, serve: bool = False):
    """The config at ``path`` (a daemon's, or with ``serve`` the server's); None, with every problem
    printed, when it is invalid."""
    from streamclf.config import ConfigError, load_config, load_serve_config

    try:
        return load_serve_config(path) if serve else load_config(path)
    except ConfigError as exc:
        print(f"{exc.source}: invalid config", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _is_serve_config(path: str) -> bool:
    """A config with a ``serve:`` section and no cameras is ``streamclf serve``'s."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False  # the daemon's loader reports it, with the line
    return isinstance(data, dict) and "serve" in data and "cameras" not in data


def cmd_check_config(args: argparse.Namespace) -> int:
    if _is_serve_config(args.config):
        served = _load(args.config, serve=True)
        if served is None:
            return 1
        print(f"{args.config}: ok (streamclf serve: {served.model.name}, gRPC port {served.serve.grpc_port})")
        return 0
    cfg = _load(args.config)
    if cfg is None:
        return 1
    print(f"{args.config}: ok ({len(cfg.cameras)} camera(s), {len(cfg.labels)} label(s))")
    return 0


def _install_signal_handlers(stop: threading.Event) -> None:
    """First SIGINT/SIGTERM asks for a clean stop; a second SIGINT exits at once.

    The handler does no more than record the signal and set ``stop``: Python runs it in the main
    thread between two bytecodes, possibly in the middle of a logging call, so the log line is
    written by a small thread that waits for ``stop``, not by the handler.
    """
    received: list[str] = []

    def on_signal(signum, frame):
        if stop.is_set() and signum == signal.SIGINT:
            # The way out when a clean stop hangs must not wait on anything: one raw write, not
            # logging, whose lock a thread stuck writing to a blocked stderr may hold.
            os.write(2, b"second SIGINT: exiting at once\n")
            os._exit(130)
        received.append(signal.Signals(signum).name)
        stop.set()

    def log_stop_request() -> None:
        stop.wait()
        if received:  # not when the pipeline stopped by itself (every file camera ended)
            log.info("received %s; shutting down", received[0])

    threading.Thread(target=log_stop_request, name="signal-log", daemon=True).start()
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def load_classifier(model_cfg: ModelConfig) -> Classifier:
    """The real model, as configured (here or on a Triton server); raises ModelLoadError."""
    from streamclf.backend import load_classifier as load

    return load(model_cfg)


def cmd_run(args: argparse.Namespace, make_classifier: ClassifierFactory = load_classifier) -> int:
    from streamclf.logs import setup_logging

    setup_logging(args.log_level, args.log_format)
    cfg = _load(args.config)
    if cfg is None:
        return 1
    from streamclf.backend import ModelLoadError
    from streamclf.pipeline import Pipeline
    from streamclf.service.runtime import Service

    log.info("streamclf %s starting with %s", __version__, os.path.abspath(args.config))
    try:
        classifier = make_classifier(cfg.model)
    except ModelLoadError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        # The model loads on a thread of its own (streamclf/model/torch_threads.py), which Ctrl-C cannot
        # stop; leave at once rather than finalise the interpreter under it.
        log.info("interrupted while loading the model")
        logging.shutdown()
        os._exit(130)
    pipeline = Pipeline(cfg, classifier, base_dir=os.path.dirname(os.path.abspath(args.config)))
    service = Service(pipeline, os.path.abspath(args.config))
    _install_signal_handlers(pipeline.stop_event)
    # SIGHUP only sets a flag; the main thread re-reads the config on its next tick.
    signal.signal(signal.SIGHUP, lambda signum, frame: service.request_reload())
    rc = service.run()
    # Camera reader threads that are blocked inside OpenCV (a stalled read, a slow open) are abandoned,
    # not joined. Normal interpreter finalisation would kill them mid-call, and unwinding through
    # OpenCV's C++ aborts the process ("FATAL: exception not rethrown", SIGABRT) instead of exiting 0.
    # Everything worth keeping is already flushed, so leave without finalising.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def cmd_evaluate(args: argparse.Namespace, make_classifier: ClassifierFactory = load_classifier) -> int:
    from streamclf.evaluate.command import run_evaluate
    from streamclf.logs import setup_logging

    setup_logging(args.log_level, args.log_format)
    cfg = _load(args.config)
    if cfg is None:
        return 1
    return run_evaluate(args, cfg, make_classifier)


def _serve_config(args: argparse.Namespace) -> ServeConfig | None:
    """Logging set up and the config of ``serve`` or ``export`` read; None (reported) when it is invalid."""
    from streamclf.logs import setup_logging

    setup_logging(args.log_level, args.log_format)
    return _load(args.config, serve=True)


def cmd_export(args: argparse.Namespace) -> int:
    cfg = _serve_config(args)
    if cfg is None:
        return 1
    try:
        from streamclf.remote.export import run_export
    except ImportError as exc:
        log.error("streamclf export needs torch, transformers, onnx, onnxscript, onnxruntime and tokenizers (%s): "
                  "pip install 'streamclf[export]'", exc)
        return 2
    return run_export(cfg, args.out_dir)


def cmd_serve(args: argparse.Namespace) -> int:
    from streamclf.backend import ModelLoadError

    cfg = _serve_config(args)
    if cfg is None:
        return 1
    try:
        from streamclf.remote.server import run_server
    except ImportError as exc:
        log.error("streamclf serve needs PyTriton, torch and transformers (%s): pip install 'streamclf[serve]'", exc)
        return 2
    stop = threading.Event()
    _install_signal_handlers(stop)
    log.info("streamclf %s serving with %s", __version__, os.path.abspath(args.config))
    try:
        return run_server(cfg, stop)
    except ModelLoadError as exc:
        log.error("%s", exc)
        return 2


def main(argv: list[str] | None = None, make_classifier: ClassifierFactory = load_classifier) -> int:
    """The ``streamclf`` command; ``make_classifier`` builds the model (tests pass a fake)."""
    args = _parser().parse_args(argv)
    if args.command == "export":
        return cmd_export(args)
    if args.command == "check-config":
        return cmd_check_config(args)
    if args.command == "evaluate":
        return cmd_evaluate(args, make_classifier)
    if args.command == "serve":
        return cmd_serve(args)
    return cmd_run(args, make_classifier)


if __name__ == "__main__":
    sys.exit(main())
