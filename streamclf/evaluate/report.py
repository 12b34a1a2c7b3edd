"""From recorded scores and ground truth to per-label reports: frame and event measures, a
threshold suggestion, and the three ways out (terminal table, JSON, YAML to paste)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from streamclf.config import Config
from streamclf.decisions import Decider
from streamclf.entities import Classification
from streamclf.evaluate.metrics import (
    EventCounts,
    FrameCounts,
    Suggestion,
    average_precision,
    counts_at,
    match_events,
    roc_auc,
    suggest_threshold,
)
from streamclf.evaluate.offline import ScoredVideo, replay_decisions
from streamclf.evaluate.truth import Truth


@dataclass(frozen=True)
class Timeline:
    """One label on one video: each classified frame's time (s) and score (0..1, the highest zone's),
    the ground truth, and the ON periods at the configured and the suggested threshold."""

    video: str
    camera: str
    duration_s: float
    times: np.ndarray
    scores: np.ndarray
    truth: tuple[tuple[float, float], ...]
    on_configured: tuple[tuple[float, float], ...]
    on_suggested: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class LabelReport:
    """Everything measured for one label (see docs/evaluate.md for what each number means)."""

    label: str
    configured_thresholds: dict[str, float]  # camera -> threshold in force
    frames: int
    positives: int
    roc_auc: float | None
    average_precision: float | None
    at_configured: FrameCounts
    suggestion: Suggestion | None
    at_suggested: FrameCounts | None
    events_configured: EventCounts
    events_suggested: EventCounts | None
    footage_s: float
    scores: np.ndarray = field(repr=False)
    positive: np.ndarray = field(repr=False)
    timelines: tuple[Timeline, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class Evaluation:
    labels: tuple[LabelReport, ...]
    videos: int
    images: int
    footage_s: float
    frames_per_s: float  # classified frames per second of scoring (wall clock)


def frame_scores(records: Sequence[Classification]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Frame times (s) and, per label, each frame's score: with zones, the highest over the zones."""
    by_frame: dict[int, tuple[float, dict[str, float]]] = {}
    for c in records:
        t, scores = by_frame.setdefault(c.frame_index, (c.frame_time, {}))
        for label, s in c.scores.items():
            scores[label] = max(s, scores.get(label, -1.0))
    order = sorted(by_frame)
    labels = {label for _, scores in by_frame.values() for label in scores}
    times = np.array([by_frame[i][0] for i in order], dtype=float)
    return times, {label: np.array([by_frame[i][1].get(label, 0.0) for i in order]) for label in labels}


def evaluated_labels(cfg: Config, truth: Truth) -> list[str]:
    """Non-background labels of every camera the TRUTH file uses, in config order."""
    cameras = {v.camera for v in truth.videos} | ({truth.images_camera} if truth.images_camera else set())
    used = {label for cam in cameras for label in cfg.labels_for(cam)}
    return [name for name, lc in cfg.labels.items() if name in used and not lc.background]


def build_report(cfg: Config, truth: Truth, videos: Sequence[ScoredVideo], image_records: Sequence[Classification],
                 target_precision: float | None = None) -> Evaluation:
    """Measure every evaluated label; ``videos`` are in ``truth.videos`` order."""
    reports = []
    for label in evaluated_labels(cfg, truth):
        reports.append(_label_report(cfg, label, truth, videos, image_records, target_precision))
    # Re-decide every video with each label's suggested threshold in one pass per video.
    suggested = {r.label: r.suggestion.threshold for r in reports if r.suggestion is not None}
    reports = [_with_suggested_events(r, truth, videos, suggested) if r.label in suggested else r for r in reports]
    frames = sum(len(v.records) for v in videos) + len(image_records)
    wall = sum(v.wall_s for v in videos)
    return Evaluation(tuple(reports), len(truth.videos), len(truth.images), sum(v.duration_s for v in truth.videos),
                      frames / wall if wall > 0 else 0.0)


def _label_report(cfg: Config, label: str, truth: Truth, videos: Sequence[ScoredVideo],
                  image_records: Sequence[Classification], target_precision: float | None) -> LabelReport:
    scores, positive, thresholds = [], [], []
    timelines, events, footage_s = [], [], 0.0
    configured: dict[str, float] = {}
    for vt, sv in zip(truth.videos, videos, strict=True):
        threshold = _threshold(cfg, vt.camera, label)
        if threshold is None:
            continue
        configured[vt.camera] = threshold
        times, by_label = frame_scores(sv.records)
        s = by_label.get(label, np.zeros(len(times)))
        scores.append(s)
        positive.append(np.array([vt.present(label, t) for t in times], dtype=bool))
        thresholds.append(np.full(len(times), threshold))
        truth_iv = tuple((i.start_s, i.end_s) for i in vt.intervals.get(label, ()))
        on = tuple((p.start_s, p.end_s) for p in replay_decisions(sv.cfg, sv.records).get(label, []))
        timelines.append(Timeline(vt.path, vt.camera, vt.duration_s, times, s, truth_iv, on))
        events.append(match_events(truth_iv, on, vt.duration_s))
        footage_s += vt.duration_s
    threshold = _threshold(cfg, truth.images_camera, label) if truth.images_camera else None
    if threshold is not None and image_records:
        configured.setdefault(str(truth.images_camera), threshold)
        _, by_label = frame_scores(image_records)
        scores.append(by_label.get(label, np.zeros(len(truth.images))))
        # score_images numbers the stills in truth.images order.
        positive.append(np.array([img.label == label for img in truth.images], dtype=bool))
        thresholds.append(np.full(len(truth.images), threshold))
    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    all_positive = np.concatenate(positive) if positive else np.zeros(0, dtype=bool)
    suggestion = suggest_threshold(all_scores, all_positive, target_precision)
    return LabelReport(
        label, configured, len(all_scores), int(all_positive.sum()), roc_auc(all_scores, all_positive),
        average_precision(all_scores, all_positive),
        counts_at(all_scores, all_positive, np.concatenate(thresholds) if thresholds else 0.0),
        suggestion, counts_at(all_scores, all_positive, suggestion.threshold) if suggestion else None,
        _sum_events(events, footage_s), None, footage_s, all_scores, all_positive, tuple(timelines),
    )


def _with_suggested_events(r: LabelReport, truth: Truth, videos: Sequence[ScoredVideo],
                           suggested: dict[str, float]) -> LabelReport:
    timelines, events = [], []
    by_path = {vt.path: (vt, sv) for vt, sv in zip(truth.videos, videos, strict=True)}
    for tl in r.timelines:
        vt, sv = by_path[tl.video]
        on = tuple((p.start_s, p.end_s) for p in replay_decisions(sv.cfg, sv.records, suggested).get(r.label, []))
        timelines.append(Timeline(tl.video, tl.camera, tl.duration_s, tl.times, tl.scores, tl.truth,
                                  tl.on_configured, on))
        events.append(match_events(tl.truth, on, vt.duration_s))
    return LabelReport(r.label, r.configured_thresholds, r.frames, r.positives, r.roc_auc, r.average_precision,
                       r.at_configured, r.suggestion, r.at_suggested, r.events_configured,
                       _sum_events(events, r.footage_s), r.footage_s, r.scores, r.positive, tuple(timelines))


def _threshold(cfg: Config, camera: str | None, label: str) -> float | None:
    if camera is None or label not in cfg.labels_for(camera):
        return None
    rules = Decider(cfg).rules(camera, label)
    return None if rules is None else rules.threshold


def _sum_events(events: Sequence[EventCounts], footage_s: float) -> EventCounts:
    intervals = sum(e.intervals for e in events)
    hit = sum(e.hit for e in events)
    false_on = sum(e.false_on for e in events)
    hours = footage_s / 3600.0
    return EventCounts(intervals, hit, intervals - hit, false_on, false_on / hours if hours > 0 else 0.0)


# -- output ---------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_table(ev: Evaluation) -> str:
    """The terminal report: one block of rows per label."""
    lines = [f"{ev.videos} video(s), {ev.footage_s:.1f} s of footage, {ev.images} image(s); "
             f"scored at {ev.frames_per_s:.1f} frames/s",
             "",
             f"{'label':<16} {'frames':>7} {'pos':>6} {'AUC':>6} {'AP':>6}  {'at':<10} {'thresh':>7} "
             f"{'prec':>6} {'recall':>6} {'F1':>6}  {'hit':>5} {'missed':>6} {'false/h':>8}"]
    for r in ev.labels:
        rows: list[tuple[str, FrameCounts, EventCounts | None]] = [("configured", r.at_configured, r.events_configured)]
        if r.suggestion is not None and r.at_suggested is not None:
            rows.append(("suggested", r.at_suggested, r.events_suggested))
        for i, (name, fc, ec) in enumerate(rows):
            head = (f"{r.label:<16} {r.frames:>7d} {r.positives:>6d} {_f(r.roc_auc):>6} {_f(r.average_precision):>6}"
                    if i == 0 else " " * 45)
            thr = _threshold_text(r) if name == "configured" else f"{fc.threshold:g}"
            ev_text = (f"{ec.hit:>2d}/{ec.intervals:<2d} {ec.missed:>6d} {ec.false_on_per_hour:>8.2f}"
                       if ec is not None else "")
            figures = f"{_f(fc.precision):>6} {_f(fc.recall):>6} {_f(fc.f1):>6}"
            lines.append(f"{head}  {name:<10} {thr:>7} {figures}  {ev_text}")
        if r.suggestion is not None:
            lines.append(" " * 45 + f"  (suggested for {r.suggestion.reason})")
        elif r.positives == 0:
            lines.append(" " * 45 + "  (no positive frames: no threshold to suggest)")
    return "\n".join(lines)


def _threshold_text(r: LabelReport) -> str:
    values = set(r.configured_thresholds.values())
    return f"{values.pop():g}" if len(values) == 1 else "per cam"


def to_json(ev: Evaluation) -> dict:
    """The report as plain JSON-ready data."""
    labels = {}
    for r in ev.labels:
        labels[r.label] = {
            "configured_thresholds": r.configured_thresholds,
            "frames": r.frames,
            "positive_frames": r.positives,
            "roc_auc": r.roc_auc,
            "average_precision": r.average_precision,
            "at_configured": asdict(r.at_configured),
            "suggestion": asdict(r.suggestion) if r.suggestion else None,
            "at_suggested": asdict(r.at_suggested) if r.at_suggested else None,
            "events_at_configured": asdict(r.events_configured),
            "events_at_suggested": asdict(r.events_suggested) if r.events_suggested else None,
            "videos": [{"video": t.video, "camera": t.camera, "truth": [list(p) for p in t.truth],
                        "on_at_configured": [list(p) for p in t.on_configured],
                        "on_at_suggested": [list(p) for p in t.on_suggested]} for t in r.timelines],
        }
    return {"videos": ev.videos, "images": ev.images, "footage_s": ev.footage_s,
            "frames_per_s": ev.frames_per_s, "labels": labels}


def suggested_yaml(cfg: Config, ev: Evaluation) -> str:
    """YAML lines to paste into the config: each label's suggested threshold, and per camera where a
    camera overrides that label's threshold."""
    out = ["labels:"]
    overrides: dict[str, list[str]] = {}
    for r in ev.labels:
        if r.suggestion is None:
            continue
        out += [f"  {r.label}:", f"    threshold: {r.suggestion.threshold:g}  # {r.suggestion.reason}"]
        for camera in r.configured_thresholds:
            o = cfg.cameras[camera].label_overrides.get(r.label)
            if o is not None and o.threshold is not None:
                overrides.setdefault(camera, []).append(
                    f"        {r.label}:\n          threshold: {r.suggestion.threshold:g}")
    if len(out) == 1:
        return "# no label has positive frames: nothing to suggest\n"
    if overrides:
        out.append("cameras:")
        for camera, entries in overrides.items():
            out += [f"  {camera}:", "    label_overrides:", *entries]
    return "\n".join(out) + "\n"

