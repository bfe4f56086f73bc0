"""``python -m benchmarks SCENARIO [--smoke]``.

Scenarios: reference, baseline, saturation, replicas, scale, sharing, coldonce,
events, eventsmoon, all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks import events, gitpath, report
from benchmarks.scenarios import SCENARIOS, Options, Result

ORDER = ["reference", "saturation", "replicas", "scale"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "scenario",
        choices=[*ORDER, *gitpath.SCENARIOS, *events.SCENARIOS, "baseline", "all"],
        help="baseline runs with reference (same run, same pushes)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds each")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the reference setup")
    parser.add_argument("--out", type=Path, default=report.RESULTS, help="results directory")
    parser.add_argument("--workdir", type=Path, default=None, help="keep run files here")
    args = parser.parse_args(argv)
    opts = Options(smoke=args.smoke, repeats=args.repeats, workdir=args.workdir)
    names = (
        ORDER
        if args.scenario == "all"
        else ["reference" if args.scenario == "baseline" else args.scenario]
    )
    results: list[Result] = []
    for name in names:
        print(f"running {name}{' (smoke)' if args.smoke else ''} ...", file=sys.stderr, flush=True)
        result = {**SCENARIOS, **gitpath.SCENARIOS, **events.SCENARIOS}[name](opts)
        results.append(result)
        for path in report.write(result, args.out):
            print(f"  wrote {path}", file=sys.stderr)
        print(report.markdown(result))
    if args.scenario == "all":
        text = report.summary(results)
        (args.out / "summary.md").write_text(text)
        print(f"wrote {args.out / 'summary.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
