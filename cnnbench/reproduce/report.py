"""A reproduction's report: ``report.json`` (for tools) and ``report.md`` (for people), side by side
with the paper's numbers, every setting, the stated rule and the verdict."""

from __future__ import annotations

import datetime
import json
import math
import platform

from cnnbench.reproduce.finding import Analysis
from cnnbench.runs.layout import write_text


def _machine() -> dict:
    import os

    import jax

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "devices": [str(d) for d in jax.devices()]}


def document(p, analysis: Analysis, wall_time: float) -> dict:
    finding, budget = p.finding, p.budget
    return {
        "name": finding.name, "reference": finding.paper, "claim": finding.claim,
        "budget": p.budget_name, "dataset": p.dataset, "seeds": p.seeds,
        "setup": {"note": budget.note, "settings": budget.settings,
                  "variants": {v.name: {"label": v.title, "arch": budget.arch or v.arch,
                                        "settings": {**v.settings, **budget.variant_settings.get(v.name, {})}}
                               for v in finding.variants}},
        "metric": finding.metric, "unit": analysis.unit,
        "measured": {name: s.to_json() for name, s in analysis.measured.items()},
        "paper": list(finding.paper_numbers),
        "verdict": analysis.verdict, "rule": finding.rule,
        "tests": [{"verdict": t.verdict, "difference": t.difference,
                   "spread": None if math.isnan(t.spread) else t.spread, "text": t.text} for t in analysis.tests],
        "details": analysis.details,
        "figures": [str(f) for f in analysis.figures],
        "runs": {r.name: {"run_dir": str(r.run_dir), "state": r.state} for r in p.runs},
        "wall_time": wall_time,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "command": command(p),
    }


def command(p) -> str:
    parts = ["cnnbench reproduce", p.finding.name, "--budget", p.budget_name]
    if p.seeds != p.budget.seeds:
        parts += ["--seeds", str(p.seeds)]
    if p.dataset != p.budget.dataset:
        parts += ["--dataset", p.dataset]
    parts += ["--out", str(p.out)]
    return " ".join(parts)


def _value(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def markdown(doc: dict) -> str:
    lines = [f"# {doc['name']}: {doc['verdict']}", "", f"**Claim.** {doc['claim']}", "",
             f"**Paper.** {doc['reference']}", "", "| the paper reports | value | where |", "| --- | ---: | --- |"]
    lines += [f"| {n['what']} | {n['value']} {n['unit']} | {n['source']} |" for n in doc["paper"]]
    lines += ["", f"## Measured: {doc['unit']}", "",
              f"Budget `{doc['budget']}` on `{doc['dataset']}`, {doc['seeds']} seed(s) (0..{doc['seeds'] - 1}). "
              f"{doc['setup']['note']}.", "", f"Metric: {doc['metric']}.", "",
              "| variant | mean | std | per seed |", "| --- | ---: | ---: | --- |"]
    for name, s in doc["measured"].items():
        lines.append(f"| {name} | {_value(s['mean'])} | {_value(s['std'])} | "
                     f"{', '.join(_value(v) for v in s['values'])} |")
    lines += ["", "## Verdict", "", f"**{doc['verdict']}**. Rule: {doc['rule']}.", ""]
    lines += [f"- {t['text']}: {t['verdict']}" for t in doc["tests"]]
    lines += ["", "## Figures", ""] + [f"![{f.rsplit('/', 1)[-1]}]({f.rsplit('/', 1)[-1]})" for f in doc["figures"]]
    lines += ["", "## Setup", "", "Shared settings: " + ", ".join(f"`{k}={v}`" for k, v in doc["setup"]["settings"].items()),
              "", "| variant | architecture | its settings |", "| --- | --- | --- |"]
    for name, v in doc["setup"]["variants"].items():
        lines.append(f"| {v['label']} | {v['arch']} | {', '.join(f'`{k}={x}`' for k, x in v['settings'].items()) or '-'} |")
    lines += ["", f"Runs ({len(doc['runs'])}) under `{next(iter(doc['runs'].values()))['run_dir'].rsplit('/', 2)[0]}`; "
                  f"`cnnbench eval`, `compare` and `visualize` read them.", "",
              f"Wall time {doc['wall_time']:.0f} s on {doc['machine']['processor']} ({doc['machine']['cpus']} CPUs), "
              f"{doc['finished']}. Again: `{doc['command']}`", ""]
    return "\n".join(lines)


def write_report(p, analysis: Analysis, wall_time: float) -> dict:
    doc = document(p, analysis, wall_time)
    write_text(p.out / "report.json", json.dumps(doc, indent=2, default=str))
    write_text(p.out / "report.md", markdown(doc))
    return doc
