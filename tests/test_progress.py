"""The one progress protocol: what a long call reports, kept (Record) or drawn (Bar)."""

import io

from rich.console import Console

from cnnbench.progress import SILENT, Bar, Progress, Record


def test_record_keeps_stages_counts_and_lines():
    seen = Record()
    seen.start("download a", 100, unit="bytes")
    seen.update(40, total=100)
    seen.update(100)
    seen.start("check a", 100, unit="bytes")
    seen.advance(30)
    seen.advance(20)
    seen.note("kept")
    seen.warn("damaged")
    assert seen.done("download a") == 100 and seen.done("check a") == 50 and seen.done() == 50
    assert seen.notes == ["kept"] and seen.warnings == ["damaged"]
    assert seen.nested() is seen and SILENT.nested() is SILENT


def test_the_silent_default_warns_through_note():
    lines = []

    class Lines(Progress):
        def note(self, text):
            lines.append(text)

    Lines().warn("a damaged checkpoint")
    assert lines == ["Warning: a damaged checkpoint"]


def test_bar_off_a_terminal_logs_stages_and_keeps_notes():
    out = io.StringIO()
    with Bar(console=Console(file=out, force_terminal=False, width=100), log="bench: ") as bar:
        bar.start("lenet5 train batch 8", 3)
        bar.advance()
        bar.update(3, status="loss 0.1")
        below = bar.nested()
        below.start("epoch 1/2", 5)
        below.advance(5)
        bar.note("epoch 1/2: val top-1 50.00%")
        bar.warn("slow")
    text = out.getvalue()
    assert "bench: lenet5 train batch 8" in text and "bench: epoch" not in text  # (the nested level is not logged)
    assert "epoch 1/2: val top-1 50.00%" in text and "Warning: slow" in text


def test_a_bar_with_no_stage_draws_nothing():
    out = io.StringIO()
    with Bar(console=Console(file=out, force_terminal=True, width=100)) as bar:
        bar.advance()
        bar.update(3)
    assert out.getvalue() == ""
