"""`cnnbench reproduce`: a paper's finding, trained, tested and reported."""

from __future__ import annotations

import click

from cnnbench.errors import UsageError
from cnnbench.output import Column, emit, err_console, format_option


# --------------------------------------------------------------------------- reproduce

@click.command()
@click.argument("name", required=False)
@click.option("--list", "list_", is_flag=True, help="List the findings, their papers, numbers and budgets.")
@click.option("--budget", default="small", show_default=True,
              help="smoke (about a minute), small (at most 15 minutes on a 2-core CPU, offline data) or paper "
                   "(the paper's own setup and data).")
@click.option("--seeds", type=int, help="Train seeds 0..N-1 of every variant (default: the budget's).")
@click.option("--dataset", help="Train on this dataset instead of the budget's (e.g. cifar10 at the small budget).")
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder of the runs, report and figures (default: reproductions/NAME).")
@format_option
def reproduce(name, list_, budget, seeds, dataset, out, fmt):
    """Reproduce a paper's finding: train its variants, test the claim, write a report with a verdict.

    \b
    Examples:
      cnnbench reproduce --list
      cnnbench reproduce resnet-degradation                  # the small budget: digits, 3 seeds
      cnnbench reproduce relu-vs-tanh --budget smoke --seeds 2
      cnnbench reproduce nin-gap-vs-fc --budget paper        # CIFAR-10, the paper's solver

    Running the same command again reuses finished runs and continues unfinished ones.
    """
    from cnnbench.reproduce import get_finding, list_findings

    if not list_ and not name:
        raise UsageError("name a finding (cnnbench reproduce --list shows them)")
    if list_:
        findings = [f.describe() for f in list_findings()]
        minutes = lambda b: "cluster" if b["estimated_minutes"] is None else f"~{b['estimated_minutes']:g} min"
        rows = [{**f, "small": f"{f['budgets']['small']['dataset']}, {f['budgets']['small']['seeds']} seeds, "
                               f"{minutes(f['budgets']['small'])}",
                 "paper_budget": f"{f['budgets']['paper']['dataset']}"} for f in findings]
        emit(rows, [Column("name", "finding", justify="left"), Column("paper", "paper", justify="left", wrap=True),
                    Column("claim", "claim", justify="left", wrap=True),
                    Column("small", "small budget", justify="left"), Column("paper_budget", "paper budget", justify="left")],
             fmt, title="the papers' findings (cnnbench reproduce NAME)", document=findings)
        return
    from cnnbench.reproduce.run import plan

    p = plan(get_finding(name), budget, seeds=seeds, dataset=dataset, out=out)
    doc = _reproduce_with_progress(p, fmt)
    rows = [{"variant": k, **v} for k, v in doc["measured"].items()]
    spread = lambda v: "" if v is None else f"{v:.2f}"
    emit(rows, [Column("variant", "variant", justify="left"), Column("mean", doc["unit"], lambda v: f"{v:.2f}"),
                Column("std", "std", spread), Column("seeds", "seeds"),
                Column("values", "per seed", lambda v: ", ".join(f"{x:.2f}" for x in v), justify="left", wrap=True)],
         fmt, title=f"{doc['name']} ({doc['budget']} budget, {doc['dataset']}): {doc['verdict']}", document=doc)
    if fmt != "json":
        err_console().print(f"verdict: {doc['verdict']} ({doc['rule']}); report: {p.out / 'report.md'}",
                            highlight=False, markup=False, soft_wrap=True)


def _reproduce_with_progress(p, fmt):
    from cnnbench.progress import Bar
    from cnnbench.reproduce.run import execute

    with Bar(transient=False, disable=fmt == "json") as bar:
        return execute(p, bar)
