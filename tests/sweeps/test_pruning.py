"""ASHA as the sweep builds it: rungs in validation reports, and a grace period past them means no pruning."""

from __future__ import annotations

from sweeps.pruning import asha, reports


def test_a_grace_period_past_the_last_report_builds_a_scheduler_that_prunes_nothing() -> None:
    # 10 steps validated every 5: 2 reports. Ray refuses grace_period > max_t with a bare assertion at the
    # start of the sweep; a config asking for 9 reports of grace means "never prune", and gets that.
    assert reports(10, 5) == 2
    scheduler = asha(10, 5, 9, 2)
    # Ray's rungs (milestone, recorded): the only one at max_t, past the final report, so none prunes.
    assert scheduler._max_t == 4 and [m for m, _ in scheduler._brackets[0]._rungs] == [4]
    assert [m for m, _ in asha(40, 2, 3, 2)._brackets[0]._rungs][-1] == 3  # within the reports: as given
