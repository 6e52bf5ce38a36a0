"""`cnnbench reproduce`: the papers' key findings as budgeted experiments that end in a verdict.

:mod:`~cnnbench.reproduce.finding` defines what a finding is, :mod:`~cnnbench.reproduce.findings`
holds them, :mod:`~cnnbench.reproduce.run` trains and analyses one, :mod:`~cnnbench.reproduce.report`
writes its report and :mod:`~cnnbench.reproduce.verdict` its statistics.
"""

from cnnbench.reproduce.finding import BUDGETS, Finding
from cnnbench.reproduce.findings import get_finding, list_findings

__all__ = ["BUDGETS", "Finding", "get_finding", "list_findings"]
