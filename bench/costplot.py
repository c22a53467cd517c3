"""``python -m bench.costplot``: server CPU per delivery against subscribers and against channels.

Reads the JSON of ``python -m bench --json`` runs: the fanout scenario (one channel, N
subscribers; burst CPU per delivery of the service) and the many scenario (N channels with two
subscribers each at a steady rate; server CPU per delivery over the publish phase), and draws one
figure with two panels, each with the band between the lowest and the highest figure of a series
and the ratio highest / lowest. Prints the points it used.

    python -m bench.costplot var/bench/fanout.json var/bench/many-*.json --out docs/performance-cost.png
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def fanout_points(doc: dict) -> dict[str, list[tuple[int, float]]]:
    """(subscribers, server us per delivery) of the service's bursts, by ASGI server."""
    server = (doc.get("settings") or {}).get("asgi_server", "daphne")
    points = []
    for row in doc.get("scenarios", {}).get("fanout") or []:
        per_cpu = ((row.get("results") or {}).get("service") or {}).get("burst", {}).get("deliveries_per_server_cpu_s")
        if per_cpu:
            points.append((row["subscribers"], 1e6 / per_cpu))
    source = (doc.get("meta") or {}).get("source")  # figures copied from a document say so
    label = f"one channel, N subscribers ({server}, burst{', ' + source if source else ''})"
    return {label: points} if points else {}


def many_points(doc: dict) -> dict[str, list[tuple[int, float]]]:
    """(channels, server us per delivery) of each many case, by mode and rate."""
    series: dict[str, list[tuple[int, float]]] = {}
    for case in (doc.get("scenarios", {}).get("many") or {}).get("cases", []):
        via = "apublish()" if case.get("publisher") == "django" else "HTTP batch"
        label = f"{case['mode'].upper()} mode, {case['rate']:g} msg/s asked, {via}"
        series.setdefault(label, []).append((case["channels"], case["cpu"]["server_us_per_delivery"]))
    return series


def collect(paths: list[Path]) -> tuple[dict, dict]:
    """The fanout and many series of every JSON file, points sorted and merged by label."""
    fanout: dict[str, list] = {}
    many: dict[str, list] = {}
    for path in paths:
        doc = json.loads(path.read_text())
        for target, found in ((fanout, fanout_points(doc)), (many, many_points(doc))):
            for label, points in found.items():
                target.setdefault(label, []).extend(points)
    for series in (fanout, many):
        for label in series:
            series[label] = sorted(dict(series[label]).items())
    return fanout, many


def draw(fanout: dict, many: dict, out: Path) -> None:
    """Two log-x panels of us per delivery, each series with its min..max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for axis, series, xlabel in (
        (axes[0], fanout, "subscribers on one channel"),
        (axes[1], many, "channels (2 subscribers each)"),
    ):
        for label, points in series.items():
            xs, ys = [x for x, _ in points], [y for _, y in points]
            (line,) = axis.plot(xs, ys, marker="o", label=f"{label}: max/min {max(ys) / min(ys):.2f}")
            axis.axhspan(min(ys), max(ys), color=line.get_color(), alpha=0.12)
            for x, y in points:
                axis.annotate(f"{y:.0f}", (x, y), textcoords="offset points", xytext=(0, 6), fontsize=7, ha="center")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel(xlabel)
        axis.grid(True, which="both", alpha=0.3)
        if series:
            axis.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("server CPU per delivery, us (log)")
    figure.suptitle("Cost grows only with the work: server CPU per delivery (measured, 2-core dev machine)")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    """Read the JSON files, print the points, save the PNG."""
    parser = argparse.ArgumentParser(prog="python -m bench.costplot", description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="+", type=Path, help="JSON files of python -m bench --json")
    parser.add_argument("--out", type=Path, default=Path("docs/performance-cost.png"), help="PNG to write")
    args = parser.parse_args(argv)
    fanout, many = collect(args.json)
    if not fanout and not many:
        parser.error("no fanout or many results in these files")
    for title, series in (("fanout", fanout), ("many", many)):
        for label, points in series.items():
            ys = [y for _, y in points]
            text = ", ".join(f"{x:,}: {y:.1f} us" for x, y in points)
            sys.stdout.write(f"{title} | {label} | {text} | max/min {max(ys) / min(ys):.2f}\n")
    draw(fanout, many, args.out)
    sys.stdout.write(f"plot saved to {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
