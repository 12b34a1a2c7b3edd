"""The ``streamclf evaluate`` subcommand: check everything, score, report.

Exit codes: 0 done, 1 invalid config or TRUTH file (nothing ran), 2 model could not be loaded,
3 a video could not be read to its end, 4 ``--plot`` without matplotlib.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from streamclf.backend import Classifier
    from streamclf.config import Config, ModelConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The subcommand's options."""
    p.add_argument("truth", help="TRUTH file: YAML saying when each label is present in each video")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON to FILE")
    p.add_argument("--plot", metavar="PNG", help="draw the report into one PNG (needs matplotlib)")
    p.add_argument("--target-precision", type=float, metavar="P",
                   help="suggest the lowest threshold whose frame precision reaches P (0..1) instead of the best F1")
    p.add_argument("--suggest", action="store_true", help="print the config lines that set the suggested thresholds")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_evaluate(args: argparse.Namespace, cfg: Config,
                 make_classifier: Callable[[ModelConfig], Classifier]) -> int:
    """Run the subcommand on a loaded ``cfg``; returns the exit code."""
    from streamclf.evaluate.truth import TruthError, load_truth

    if args.target_precision is not None and not 0.0 < args.target_precision <= 1.0:
        print(f"--target-precision must be within (0, 1], got {args.target_precision}", file=sys.stderr)
        return 1
    if args.plot:
        try:
            import matplotlib  # noqa: F401  # checked before the long part, not after it
        except ImportError:
            print("--plot needs matplotlib: pip install 'streamclf[evaluate]'", file=sys.stderr)
            return 4
    try:
        truth = load_truth(args.truth, cfg, os.path.dirname(os.path.abspath(args.config)))
    except TruthError as exc:
        print(f"{args.truth}: invalid ground truth", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    return _score_and_report(args, cfg, truth, make_classifier)


def _score_and_report(args: argparse.Namespace, cfg: Config, truth, make_classifier) -> int:
    from streamclf.backend import ModelLoadError
    from streamclf.evaluate.offline import FootageError, OfflineScorer
    from streamclf.evaluate.report import build_report, format_table, suggested_yaml, to_json

    try:
        scorer = OfflineScorer(cfg, make_classifier(cfg.model), show_progress=not args.quiet,
                               config_dir=os.path.dirname(os.path.abspath(args.config)))
    except ModelLoadError as exc:
        print(f"{exc}", file=sys.stderr)
        return 2
    try:
        videos = [scorer.score_video(v.camera, v.path, v.duration_s) for v in truth.videos]
        images = scorer.score_images(truth.images_camera, truth.images) if truth.images and truth.images_camera else []
    except FootageError as exc:
        print(f"{args.truth}: {exc}", file=sys.stderr)
        return 3
    ev = build_report(cfg, truth, videos, images, args.target_precision)
    print(format_table(ev))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(to_json(ev), f, indent=2)
    if args.plot:
        from streamclf.evaluate.plot import write_plot

        write_plot(ev, args.plot)
    if args.suggest:
        print()
        print(suggested_yaml(cfg, ev), end="")
    return 0
