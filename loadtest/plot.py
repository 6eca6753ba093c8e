"""``--plot FILE.png``: latency over time and latency histograms of a run (matplotlib, headless).

matplotlib is an optional extra (``pip install 'parley[plot]'``); ``missing_dependency``
lets the CLI refuse ``--plot`` before a run instead of failing after it.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from .stats import BIN_S, Stats

_PANELS = (
    ("ttft", "time to first token"),
    ("gap", "inter-token gap"),
    ("delivery", "delivery latency"),
    ("schedule_lag", "lag behind pace"),
    ("resume", "resume -> caught up"),
)


def missing_dependency() -> str | None:
    """``"matplotlib"`` when it cannot be imported, else None."""
    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):  # a broken install, or sys.modules["matplotlib"] = None
        found = False
    return None if found else "matplotlib"


def plot(stats: Stats, report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(m, label) for m, label in _PANELS if stats.hist[m].count]
    rows = len(panels) + 1
    fig, axes = plt.subplots(rows, 2, figsize=(13, 3.0 * rows), squeeze=False)
    bins = stats.tokens_per_bin
    ax = axes[0][0]
    ax.plot([i * BIN_S for i in range(len(bins))], [n / BIN_S for n in bins], color="tab:blue")
    ax.set_title(f"tokens received per second ({BIN_S:g} s bins)")
    ax.set_xlabel("s since start")
    ax = axes[0][1]
    ax.axis("off")
    s = report
    lines = [
        f"sessions {s['sessions']['connected']}  turns {s['turns']['completed']}  tokens {s['tokens']}",
        f"tokens/s {s['tokens_per_s'] or 0:,.0f}  tokens/frame {s['tokens_per_frame']}",
        f"errors {sum(s['errors'].values())}  failures {sum(s['failures'].values())}  "
        f"resumes {s['resumes']['resumes']}",
        "integrity: "
        + ", ".join(f"{k}={v}" for k, v in s["integrity"].items() if k != "ok")
        + ("  OK" if s["integrity"]["ok"] else "  FAILED"),
    ]
    ax.text(0.0, 0.9, "\n".join(lines), va="top", family="monospace", fontsize=9)
    for row, (metric, label) in enumerate(panels, start=1):
        pts = stats.samples[metric].points
        ax = axes[row][0]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=2, alpha=0.4)
        ax.set_title(f"{label} over time (ms, sampled)")
        ax.set_xlabel("s since start")
        ax.set_yscale("symlog", linthresh=1.0)
        ax = axes[row][1]
        edges, counts = stats.hist[metric].edges_and_counts()
        h = stats.hist[metric]
        if h.zeros:
            edges, counts = [0.0005, *edges], [h.zeros, *counts]
        if edges:
            ax.bar(edges, counts, width=[e * 0.01 for e in edges], align="edge")
            ax.set_xscale("log")
        p50, p99 = h.percentile(50), h.percentile(99)
        for v, style in ((p50, "--"), (p99, ":")):
            if v:
                ax.axvline(v, color="red", linestyle=style)
        ax.set_title(f"{label} histogram (ms): p50 {p50 or 0:.2f}, p99 {p99 or 0:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
