"""The worklist export's training split: a function of the study alone, whatever secret keys the logs."""

from __future__ import annotations

import os
from collections import Counter

from secondreader import logsafe
from secondreader.worklist.worklist import export_split


def test_a_studys_split_does_not_move_when_the_log_secret_changes() -> None:
    uids = [f"1.2.826.0.1.3680043.8.498.{i}" for i in range(500)]
    before = [export_split(uid) for uid in uids]
    saved = logsafe._secret
    try:
        # the service and the CLI set a secret of their own (per install, or random per process), and
        # may rotate it: a study's verdicts must stay in the split they trained or were tested in
        logsafe.set_secret(os.urandom(32))
        assert [export_split(uid) for uid in uids] == before
        assert logsafe.study_key(uids[0]) != logsafe.study_key(uids[1])
    finally:
        logsafe.set_secret(saved)
    counts = Counter(before)
    assert set(counts) == {"train", "val", "test"}
    # one in five validates, one in five tests
    assert 70 <= counts["val"] <= 130 and 70 <= counts["test"] <= 130, counts
