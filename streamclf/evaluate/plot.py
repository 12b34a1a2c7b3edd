"""The report picture (``--plot``): one row per label with the score histograms of positive and
negative frames (both thresholds marked), the precision-recall curve, and the score over time
against the ground truth. matplotlib is an optional extra (``pip install streamclf[evaluate]``)."""

from __future__ import annotations

import numpy as np

from streamclf.evaluate.metrics import precision_recall_curve
from streamclf.evaluate.report import Evaluation, LabelReport

CONFIGURED_COLOUR, SUGGESTED_COLOUR = "tab:red", "tab:green"


def write_plot(ev: Evaluation, path: str) -> None:
    """Draw ``ev`` into one PNG at ``path``; raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    rows = max(1, len(ev.labels))
    fig, axes = plt.subplots(rows, 3, figsize=(16, 3.6 * rows), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 2.2]})
    for row, report in zip(axes, ev.labels, strict=False):  # one row even with no label
        _histograms(row[0], report)
        _pr_curve(row[1], report)
        _timeline(row[2], report)
    if not ev.labels:
        axes[0][0].text(0.5, 0.5, "no labels evaluated", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _mark_thresholds(ax, r: LabelReport, horizontal: bool = False) -> None:
    line = ax.axhline if horizontal else ax.axvline
    for t in sorted(set(r.configured_thresholds.values())):
        line(t, color=CONFIGURED_COLOUR, linestyle="--", label=f"configured {t:g}")
    if r.suggestion is not None:
        line(r.suggestion.threshold, color=SUGGESTED_COLOUR, label=f"suggested {r.suggestion.threshold:g}")


def _histograms(ax, r: LabelReport) -> None:
    # Over the scores' own range: zero-shot scores often sit in a narrow band, which 0..1 bins would hide.
    marks = [*r.configured_thresholds.values(), *([r.suggestion.threshold] if r.suggestion else [])]
    lo, hi = min([*r.scores, *marks], default=0.0), max([*r.scores, *marks], default=1.0)
    pad = max(0.02 * (hi - lo), 1e-3)
    bins = np.linspace(max(0.0, lo - pad), min(1.0, hi + pad), 51)
    ax.hist(r.scores[~r.positive], bins=bins, alpha=0.6, color="tab:gray", label="absent")
    ax.hist(r.scores[r.positive], bins=bins, alpha=0.6, color="tab:blue", label="present")
    _mark_thresholds(ax, r)
    ax.set_yscale("log" if len(r.scores) > 200 else "linear")
    ax.set_title(f"{r.label}: scores of frames")
    ax.set_xlabel("score")
    ax.set_ylabel("frames")
    ax.legend(fontsize=7)


def _pr_curve(ax, r: LabelReport) -> None:
    if r.positives:
        precision, recall, _ = precision_recall_curve(r.scores, r.positive)
        ax.plot(np.r_[0.0, recall], np.r_[precision[0], precision], color="tab:blue", drawstyle="steps-post")
    ax.plot([r.at_configured.recall], [r.at_configured.precision], "o", color=CONFIGURED_COLOUR, label="configured")
    if r.at_suggested is not None:
        ax.plot([r.at_suggested.recall], [r.at_suggested.precision], "s", color=SUGGESTED_COLOUR, label="suggested")
    auc = "-" if r.roc_auc is None else f"{r.roc_auc:.3f}"
    ap = "-" if r.average_precision is None else f"{r.average_precision:.3f}"
    ax.set_title(f"precision-recall (AUC {auc}, AP {ap})")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.legend(fontsize=7, loc="lower left")


def _timeline(ax, r: LabelReport) -> None:
    """Videos laid end to end; ground truth shaded, ON periods as bars under the score."""
    offset = 0.0
    for i, tl in enumerate(r.timelines):
        for s, e in tl.truth:
            first = i == 0 and s == tl.truth[0][0]
            ax.axvspan(offset + s, offset + e, color="tab:blue", alpha=0.15, label="present" if first else None)
        ax.plot(offset + tl.times, tl.scores, color="black", linewidth=0.8, label="score" if i == 0 else None)
        for s, e in tl.on_configured:
            ax.plot([offset + s, offset + e], [-0.04, -0.04], color=CONFIGURED_COLOUR, linewidth=4)
        for s, e in tl.on_suggested:
            ax.plot([offset + s, offset + e], [-0.09, -0.09], color=SUGGESTED_COLOUR, linewidth=4)
        offset += tl.duration_s
        if i + 1 < len(r.timelines):
            ax.axvline(offset, color="tab:gray", linewidth=0.5)
    _mark_thresholds(ax, r, horizontal=True)
    ax.set_ylim(-0.12, 1.02)
    ax.set_xlim(0, max(offset, 1e-3))
    ax.set_title("score over time (bars: ON at configured / suggested threshold)")
    ax.set_xlabel("seconds of footage (videos end to end)")
    ax.legend(fontsize=7, loc="upper right")
