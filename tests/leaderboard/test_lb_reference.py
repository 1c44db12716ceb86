"""Which runs the board compares, read from a real MLflow store: the reference locked test set, runs that
cannot say which test set they were scored on, duplicate runs of one trial, and truncated examples."""

from __future__ import annotations

import pytest
from lb_store import LORA, OTHER_SHA, SHA, final, hits, log_sweep
from mlflow.tracking import MlflowClient

from leaderboard import build, load_runs


def lora(name: str, quality: float | None, **extra):
    return {"name": name, "method": "lora", "params": LORA, "metrics": final(quality, 0.2), **extra}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    # The parent says SHA; most runs were scored on OTHER_SHA (e.g. a lock re-made under the sweep's feet).
    log_sweep(client, root, "parent-wins", "exact_match", [
        lora("on-parent-set", 0.7), lora("other-1", 0.8, sha=OTHER_SHA), lora("other-2", 0.9, sha=OTHER_SHA),
    ], parent_sha=SHA)
    # No tag on the parent (a sweep from before the tag, or a parent that died early): the majority decides.
    log_sweep(client, root, "majority-wins", "exact_match", [
        lora("minority", 0.7), lora("major-1", 0.8, sha=OTHER_SHA), lora("major-2", 0.6, sha=OTHER_SHA),
    ], parent_sha=None)
    log_sweep(client, root, "no-hash", "exact_match", [
        lora("tagged", 0.7), lora("scored-untagged", 0.95, sha=None),
        lora("failed-untagged", None, sha=None, status="failed", val=None),
    ])
    log_sweep(client, root, "dupes", "exact_match", [
        lora("first-attempt", 0.7, trial_id="trial_007"), lora("second-attempt", 0.72, trial_id="trial_007"),
        lora("single", 0.6, trial_id="trial_008"),
    ])
    log_sweep(client, root, "cut", "exact_match", [
        {**lora("cut-run", 0.7), "metrics": final(0.7, 0.2, truncated_train=12, truncated_val=0,
                                                   truncated_test=3)},
        {**lora("clean-run", 0.72), "metrics": final(0.72, 0.2, truncated_train=0, truncated_val=0,
                                                     truncated_test=0)},
        lora("old-run-without-counts", 0.6),
    ])
    log_sweep(client, root, "short-file", "exact_match", [
        {**lora("best", 0.8), "scores": hits(200, 160)},
        {**lora("short", 0.7, params={**LORA, "rank": "8"}), "scores": hits(150, 105)},  # 150 lines, n 200
        {**lora("whole", 0.75, params={**LORA, "rank": "32"}), "scores": hits(200, 150)},
    ])
    return uri


def test_the_parent_runs_test_set_is_the_reference_even_against_the_majority(store) -> None:
    df, warnings = load_runs(["parent-wins"], store)
    assert list(df["run_name"]) == ["on-parent-set"]
    assert set(df["test_set_sha256"]) == {SHA}
    assert any(f"left out 2 run(s) evaluated on another locked test set (sha256 {OTHER_SHA[:12]}...) than the "
               f"reference {SHA[:12]}..." in w for w in warnings)


def test_without_a_parent_tag_the_most_common_test_set_is_the_reference(store) -> None:
    df, warnings = load_runs(["majority-wins"], store)
    assert sorted(df["run_name"]) == ["major-1", "major-2"]
    assert any(f"left out 1 run(s) evaluated on another locked test set (sha256 {SHA[:12]}...) than the "
               f"reference {OTHER_SHA[:12]}..." in w for w in warnings)


def test_the_first_sweeps_parent_decides_for_several_sweeps(store) -> None:
    # majority-wins has no parent tag, so the next parent that has one (parent-wins: SHA) is the reference.
    df, _ = load_runs(["majority-wins", "parent-wins"], store)
    assert sorted(df["run_name"]) == ["minority", "on-parent-set"]


def test_a_scored_run_without_a_test_set_hash_is_left_out_a_failed_one_kept(store) -> None:
    df, warnings = load_runs(["no-hash"], store)
    assert sorted(df["run_name"]) == ["failed-untagged", "tagged"]  # the failed run still shows its cost
    assert any("left out 1 run(s) with a test quality but no sweepboard.test_set_sha256 tag" in w
               for w in warnings)
    board = build(["no-hash"], store)
    assert board.decision.recommended is not None and board.decision.recommended["run_name"] == "tagged"


def test_two_mlflow_runs_of_one_trial_are_listed_and_warned_about(store) -> None:
    df, warnings = load_runs(["dupes"], store)
    assert sorted(df["run_name"]) == ["first-attempt", "second-attempt", "single"]
    assert "1 trial(s) have more than one MLflow run (all are listed): dupes/trial_007" in warnings


def test_truncated_examples_are_warned_about_with_counts_and_the_fix(store) -> None:
    df, warnings = load_runs(["cut"], store)
    cut = [w for w in warnings if "max_seq_len" in w]
    assert len(cut) == 1
    assert cut[0].startswith("1 run(s) cut examples to max_seq_len (cut-run (train 12, test 3))")
    assert "raise trial.max_seq_len" in cut[0]
    rows = df.set_index("run_name")
    assert rows.loc["cut-run", "truncated_train"] == 12 and rows.loc["clean-run", "truncated_test"] == 0
    assert rows["truncated_train"].isna()["old-run-without-counts"]  # absent counts are tolerated
    board = build(["cut"], store)
    assert any("cut-run" in w and "max_seq_len" in w for w in board.warnings)


def test_a_predictions_file_of_the_wrong_length_is_not_paired(store) -> None:
    board = build(["short-file"], store)
    rows = board.ranked.set_index("run_name")
    assert any("not one line per locked test row (short (150 lines, n_test 200))" in w for w in board.warnings)
    assert rows.loc["short", "tie_test"] == "interval-overlap"
    assert any("could not be paired example by example with the best run (short;" in w for w in board.warnings)
    # 10 examples best gets and whole misses, none the other way: McNemar p = 2 x 0.5^10.
    assert rows.loc["whole", "tie_test"] == "mcnemar-exact"
    assert rows.loc["whole", "p_vs_best"] == pytest.approx(2 * 0.5**10)


def test_a_reused_sweep_name_shows_only_the_newest_sweeps_runs(tmp_path) -> None:
    """A sweep started again under a used name (its folder deleted) has a new sweep id and parent: the board
    by that name is the new sweep's, the old runs are left out with a warning, never mixed in."""
    from tracking.names import TAG_ROLE, TAG_SWEEP_ID

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    log_sweep(client, tmp_path, "reused", "exact_match", [lora("old-a", 0.9), lora("old-b", 0.8)])
    experiment = client.get_experiment_by_name("reused").experiment_id
    for run in client.search_runs([experiment]):
        client.set_tag(run.info.run_id, TAG_SWEEP_ID, "old-id")
    parent = client.create_run(experiment, tags={TAG_ROLE: "sweep", TAG_SWEEP_ID: "new-id"})
    client.set_terminated(parent.info.run_id)
    assert load_runs(["reused"], uri)[0].empty  # the new sweep has no trials yet: none of the old ones show
    old_tags = client.search_runs([experiment], "attributes.run_name = 'old-a'")[0].data.tags
    tags = {k: v for k, v in old_tags.items() if not k.startswith("mlflow.")}
    new = client.create_run(experiment, run_name="new-a", tags={
        **tags, TAG_SWEEP_ID: "new-id", "mlflow.parentRunId": parent.info.run_id})
    client.log_metric(new.info.run_id, "test_quality", 0.5)
    client.log_metric(new.info.run_id, "val_quality", 0.5)
    df, warnings = load_runs(["reused"], uri)
    assert list(df["run_name"]) == ["new-a"]
    assert any("left out 3 run(s) of 1 earlier sweep(s)" in w and "new-id" in w for w in warnings), warnings
