#!/usr/bin/env python3
"""Plot a `mobilemoe ... --stats-json FILE` statistics file into a PNG.

Usage: scripts/plot_stats.py stats.json out.png

Left: share of MoE FFN time per phase, per layer (stacked bars, absolute us/call on top).
Right: expert load (tokens routed to each expert, per layer) as a heat map.
Uses matplotlib (in .venv: .venv/bin/python scripts/plot_stats.py ...).
"""
import json
import sys


def main(argv):
    if len(argv) != 3 or argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if len(argv) > 1 and argv[1] in ("-h", "--help") else 2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(argv[1]) as f:
        st = json.load(f)
    phases = st.get("phases", [])
    layers = st.get("layers", [])
    routing = st.get("routing", [])

    fig, axes = plt.subplots(1, 2, figsize=(13, max(3.5, 0.35 * max(len(layers), len(routing), 1) + 2)))
    ax = axes[0]
    if layers:
        names = ["-" if l["layer"] is None else str(l["layer"]) for l in layers]
        left = [0.0] * len(layers)
        cmap = plt.get_cmap("tab10")
        for i, p in enumerate(phases + ["other"]):
            vals = []
            for l in layers:
                tot = l["moe_ns"] or 1
                if p == "other":
                    v = max(0, l["moe_ns"] - sum(l["phase_ns"].values()))
                else:
                    v = l["phase_ns"].get(p, 0)
                vals.append(100.0 * v / tot)
            ax.barh(names, vals, left=left, color=cmap(i % 10), label=p)
            left = [a + b for a, b in zip(left, vals)]
        for y, l in enumerate(layers):
            ax.text(101, y, f"{l['moe_ns'] / 1e3 / max(l['calls'], 1):.0f} us/call", va="center", fontsize=8)
        ax.set_xlim(0, 125)
        ax.set_xlabel("% of moe_ffn time")
        ax.set_ylabel("layer")
        ax.invert_yaxis()
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=4)
        ax.set_title("MoE FFN time per phase")
    else:
        ax.text(0.5, 0.5, "no phase timings (run with --trace/--stats)", ha="center")
        ax.set_axis_off()

    ax = axes[1]
    if routing:
        n = max(len(r["tokens_per_expert"]) for r in routing)
        grid = [r["tokens_per_expert"] + [0] * (n - len(r["tokens_per_expert"])) for r in routing]
        im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_yticks(range(len(routing)), [str(r["layer"]) for r in routing])
        ax.set_xlabel("expert")
        ax.set_xticks(range(0, n, max(1, n // 16)))
        ax.set_ylabel("layer")
        ax.set_title("tokens routed per expert")
        fig.colorbar(im, ax=ax, label="tokens")
    else:
        ax.text(0.5, 0.5, "no routing counts", ha="center")
        ax.set_axis_off()

    fig.tight_layout()
    fig.savefig(argv[2], dpi=110)
    print(f"wrote {argv[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
