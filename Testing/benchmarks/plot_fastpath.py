"""Plot the results of ``bench_fastpath.py`` (one PNG, four panels) for the README; the sections of
several result files are combined (the first file's header is used).

    .venv/bin/python Testing/benchmarks/plot_fastpath.py Testing/benchmarks/results/fastpath.png \\
        Testing/benchmarks/results/fastpath.json Testing/benchmarks/results/fastpath_big.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _bars(ax, labels, values, colors, fmt="{:.1f}"):
    xs = range(len(values))
    ax.bar(xs, values, color=colors)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=8)
    for x, v in zip(xs, values):
        ax.text(x, v, fmt.format(v), ha="center", va="bottom", fontsize=8)


def plot(doc: dict, out: Path) -> Path:
    sec = doc["sections"]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    fwd = sec.get("forward", {})
    labels, vals, cols = [], [], []
    for arch in ("official", "compact"):
        for name, col in (("fp32", "#999999"), ("fast", "#2a7fff"), ("bf16", "#ffaa33")):
            r = fwd.get(arch, {}).get(name, {})
            if r.get("forward_s") is not None:
                labels.append(f"{arch}\n{name}")
                vals.append(r["forward_s"])
                cols.append(col)
    _bars(axes[0], labels, vals, cols)
    axes[0].set_title("network forward, all tasks (s)", fontsize=10)
    tr = sec.get("train", {})
    b, a = tr.get("before_contiguous", {}), tr.get("after_channels_last", {})
    if b.get("s_per_step") and a.get("s_per_step"):
        names = ["before\n(contiguous)", "after\n(channels_last)"]
        gen = [b["generator_s_per_step"], a["generator_s_per_step"]]
        net = [b["s_per_step"] - gen[0], a["s_per_step"] - gen[1]]
        axes[1].bar(names, gen, color="#bbbbbb", label="generator")
        axes[1].bar(names, net, bottom=gen, color="#2a7fff", label="network fwd+bwd+AdamW")
        for i in range(2):
            axes[1].text(i, gen[i] + net[i], f"{gen[i] + net[i]:.1f}", ha="center", va="bottom", fontsize=8)
        axes[1].legend(fontsize=7)
        axes[1].set_title(f"training step {b.get('size')}^3 x {b.get('n_samples')} (s)", fontsize=10)
    peer = sec.get("peer", {})
    labels, vals, cols, rss = [], [], [], []
    if peer.get("brainfm", {}).get("process_wall_s"):
        labels.append("brainfm run\n(compact)")
        vals.append(peer["brainfm"]["process_wall_s"])
        rss.append(peer["brainfm"]["peak_rss_gb"])
        cols.append("#2a7fff")
    if peer.get("samseg", {}).get("status") == "ok":
        labels.append(peer["samseg"]["method"].replace(" ", "\n", 1))
        vals.append(peer["samseg"]["seconds"])
        rss.append(peer["samseg"]["peak_rss_gb"])
        cols.append("#cc5555")
    if vals:
        _bars(axes[2], labels, vals, cols, "{:.0f}")
        axes[2].set_title("voxelmorph T1: wall (s); peak RSS in labels", fontsize=10)
        for i, r in enumerate(rss):
            axes[2].text(i, vals[i] * 0.5, f"{r:.2f} GB", ha="center", color="white", fontsize=8)
    big = sec.get("big", {})
    labels, peaks, budgets = [], [], []
    for key, r in big.items():
        plan = r.get("memory_plan") or {}
        if r.get("exit_code") == 0 and plan:
            labels.append(key.replace("/", "\n").replace("_budget", "").replace("budget_", ""))
            peaks.append(r["peak_rss_gb"])
            budgets.append(plan.get("budget_gb", 0.0))
    if peaks:
        xs = range(len(peaks))
        axes[3].bar([x - 0.2 for x in xs], budgets, width=0.4, color="#dddddd", label="budget")
        axes[3].bar([x + 0.2 for x in xs], peaks, width=0.4, color="#2a7fff", label="peak RSS")
        axes[3].set_xticks(list(xs))
        axes[3].set_xticklabels(labels, fontsize=7)
        axes[3].legend(fontsize=7)
        axes[3].set_title("large inputs, all tasks: GB", fontsize=10)
    cpu = doc.get("cpu", {})
    fig.suptitle(f"{cpu.get('model', 'CPU')}, {doc.get('threads')} threads, load before "
                 f"{doc.get('load_before', ['?'])[0]} ({doc.get('date_utc')} UTC)", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    return out


if __name__ == "__main__":
    docs = [json.loads(Path(p).read_text()) for p in sys.argv[2:]]
    merged = dict(docs[0])
    merged["sections"] = {}
    for d in docs:  # later files add cases to (or replace cases of) the same section
        for k, v in d.get("sections", {}).items():
            merged["sections"].setdefault(k, {}).update(v)
    plot(merged, Path(sys.argv[1]))
