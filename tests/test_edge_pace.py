"""`--emulate-speeds`: an edge holds its summary until its plant's declared cycle has passed."""

from __future__ import annotations

from hierfl.runtime import protocol
from hierfl.runtime.edge_pace import DeclaredPace, NoPace

SUMMARY = (protocol.SUMMARY, {"round": 1})
EVALUATION = (protocol.EVALUATION, {"round": 0})


def test_a_summary_waits_for_the_declared_cycle_and_nothing_else_does():
    pace = DeclaredPace(2.5)
    pace.started(10.0)
    assert pace.hold((EVALUATION, SUMMARY), now=11.0) == (EVALUATION,)
    assert pace.due(12.4) == ()
    assert pace.due(12.5) == (SUMMARY,)
    assert pace.due(13.0) == ()
    pace.started(20.0)  # a cycle slower than declared: its summary leaves at once
    assert pace.hold((SUMMARY,), now=23.0) == (SUMMARY,)


def test_without_the_option_summaries_leave_at_once():
    assert NoPace().hold((SUMMARY,), now=0.0) == (SUMMARY,)
