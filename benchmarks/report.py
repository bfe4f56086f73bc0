"""Results: ``benchmarks/results/<scenario>.json``, ``.md`` and ``.png``."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

from benchmarks import infra
from benchmarks.scenarios import Result

RESULTS = Path(__file__).resolve().parent / "results"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def machine() -> str:
    return f"{infra.cores()} cores, {platform.machine()}, Python {platform.python_version()}"


def markdown(result: Result) -> str:
    lines = [
        f"### {result.title}",
        "",
        f"Machine: {machine()}. Scaling: {result.scaling.get('note', '')}"
        + (
            f" (interval {result.scaling['interval_s']:g} s for 2 min, window "
            f"{result.scaling['window_s']:g} s for 10 min)"
            if "interval_s" in result.scaling
            else ""
        )
        + f". Run time {result.seconds:.0f} s.",
        "",
        "| figure | value |",
        "| --- | --- |",
    ]
    lines += [f"| {name} | {value} |" for name, value in result.rows]
    if result.targets:
        lines += ["", "| target | measured | goal | met |", "| --- | --- | --- | --- |"]
        for target in result.targets:
            t = target.as_dict()
            met = "yes" if target.met else "**no**"
            lines.append(f"| {t['name']} | {target.value:,.3f} | {t['target']} | {met} |")
    if result.notes:
        lines.append("")
        lines += [f"- {note}" for note in result.notes]
    return "\n".join(lines) + "\n"


def write(result: Result, directory: Path = RESULTS) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    data = {
        "scenario": result.scenario,
        "title": result.title,
        "machine": {"cores": infra.cores(), "description": machine()},
        "scaling": result.scaling,
        "figures": result.figures,
        "targets": [t.as_dict() for t in result.targets],
        "notes": result.notes,
        "runs": result.runs,
        "seconds": result.seconds,
    }
    paths = [directory / f"{result.scenario}.json", directory / f"{result.scenario}.md"]
    paths[0].write_text(json.dumps(_clean(data), indent=2, default=str))
    paths[1].write_text(markdown(result))
    png = plot(result, directory / f"{result.scenario}.png")
    if png is not None:
        paths.append(png)
    return paths


def plot(result: Result, path: Path) -> Path | None:
    window = result.plots.get("window")
    latency = result.plots.get("latency")
    if not window and not latency:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in (window, latency) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    column = 0
    if window:
        ax = axes[0][column]
        column += 1
        interval = window["interval"]
        for name, series in window["series"].items():
            if series:
                ax.plot(
                    [t / interval for t, _ in series],
                    [n / window["quota"] for _, n in series],
                    label=f"{name}: requests in the last window",
                )
        ax.axhline(1.0, color="red", linestyle="--", label=f"quota ({window['quota']:,}/window)")
        ax.axhline(
            window["cap"] / window["quota"],
            color="orange",
            linestyle=":",
            label="usable cap (5% headroom)",
        )
        ax.set_xlabel("time (intervals)")
        ax.set_ylabel("share of the quota (sliding window)")
        ax.set_title(f"Requests per sliding window ({window['window']:g} s = 10 min)")
        ax.legend(fontsize=8)
    if latency:
        ax = axes[0][column]
        values = latency["push_to_commit"]
        if values:
            ax.hist(values, bins=30, color="tab:blue", alpha=0.8, label="push to commit")
            for q, style in ((50, "-"), (99, "--")):
                v = infra.percentile(values, q)
                ax.axvline(v, color="black", linestyle=style, label=f"p{q} = {v:.2f}")
        checks = latency.get("push_to_check") or []
        if checks:
            ax.hist(checks, bins=30, color="tab:green", alpha=0.4, label="push to first check")
        ax.axvline(1.1, color="red", linestyle=":", label="target p99 1.1")
        ax.set_xlabel("latency (intervals)")
        ax.set_ylabel("(push, branch) pairs")
        ax.set_title("Push-to-commit latency")
        ax.legend(fontsize=8)
    fig.suptitle(f"{result.title} — {machine()}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary(results: list[Result]) -> str:
    lines = [
        "## Benchmarks",
        "",
        f"`python -m benchmarks all` on {machine()}; "
        f"total {sum(r.seconds for r in results):.0f} s. "
        "Results: `benchmarks/results/`.",
        "",
    ]
    for result in results:
        lines.append(markdown(result))
    targets = [t for r in results for t in r.targets]
    if targets:
        lines += [
            "### Targets",
            "",
            "| target | measured | goal | met |",
            "| --- | --- | --- | --- |",
        ]
        for t in targets:
            d = t.as_dict()
            lines.append(
                f"| {d['name']} | {t.value:,.3f} | {d['target']} | {'yes' if t.met else '**no**'} |"
            )
    return "\n".join(lines) + "\n"
