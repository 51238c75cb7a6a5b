"""Render the figures a fault run recorded (HYDRA_FAULTS_REPORT, one JSON line per fault class) as the markdown
table of docs/reliability.md: ``python -m tests.faults.report build/faults-report.jsonl``."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def render(rows: list[dict[str, object]]) -> str:
    knobs = {json.dumps(r["knobs"], sort_keys=True) for r in rows}
    seeds = sorted({str(r["seed"]) for r in rows})
    out = [f"Knobs: {', '.join(sorted(knobs))}; seed(s): {', '.join(seeds)}", "",
           "| fault class | trials | refused | converged | notes |", "| --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        notes = "; ".join(str(n) for n in r["notes"]).replace("|", "\\|")  # type: ignore[attr-defined]
        refused, converged = ("—" if r[k] is None else r[k] for k in ("refused", "converged"))
        out.append(f"| {r['fault']} | {r['trials']} | {refused} | {converged} | {notes} |")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.faults.report REPORT.jsonl", file=sys.stderr)
        return 2
    rows = [json.loads(line) for line in Path(argv[0]).read_text().splitlines() if line.strip()]
    print(render(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
