"""The benchmark runner's pure parts: the trial layout, the retry policy, the run loop."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bench.runner import (
    RetryBudget,
    RetryPolicy,
    RunHooks,
    Trial,
    run_trials,
    trial_matrix,
)


def _servers(scenario: str) -> tuple[str, ...]:
    return ("mirror",) if scenario == "tag" else ("nginx", "mirror")


def test_rounds_are_outermost_and_subjects_of_a_scenario_back_to_back() -> None:
    order = [(t.round, t.scenario, t.subject) for t in trial_matrix(["blob", "tag"], _servers, 2)]
    assert order == [
        (0, "blob", "nginx"),
        (0, "blob", "mirror"),
        (0, "tag", "mirror"),
        (1, "blob", "nginx"),
        (1, "blob", "mirror"),
        (1, "tag", "mirror"),
    ]


def test_subjects_are_asked_once_per_scenario_and_no_rounds_is_no_trials() -> None:
    asked: list[str] = []

    def subjects(scenario: str) -> list[str]:
        asked.append(scenario)
        return ["a", "b"]

    assert len(trial_matrix(["x", "y"], subjects, 3)) == 12
    assert asked == ["x", "y"]
    assert trial_matrix(["x"], subjects, 0) == []


def test_pauses_grow_with_each_attempt() -> None:
    policy = RetryPolicy(budget=6, pause_s=0.3)
    assert [policy.pause_before(n) for n in range(3)] == pytest.approx([0.3, 1.2, 2.1])
    assert RetryPolicy().pause_before(5) == 0.0


def test_the_budget_is_spent_once_per_retry_and_never_below_zero() -> None:
    budget = RetryBudget(2)
    assert [budget.spend() for _ in range(4)] == [True, True, False, False]
    assert budget.remaining == 0
    assert not RetryBudget(0).spend()


class _Recorder(RunHooks[str, str, float]):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def round_started(self, round_: int) -> None:
        self.events.append(("round", round_))

    def measured(self, trial: Trial[str, str], result: float) -> None:
        self.events.append(("measured", result))

    def discarded(self, trial: Trial[str, str], result: float) -> None:
        self.events.append(("discarded", result))

    def kept(self, trial: Trial[str, str], result: float) -> None:
        self.events.append(("kept", result))


def _scripted(
    results: list[float],
) -> tuple[Callable[[Trial[str, str]], float], list[Trial[str, str]]]:
    """A `measure` returning `results` in turn, remembering which trial asked."""
    asked: list[Trial[str, str]] = []
    feed = iter(results)

    def measure(trial: Trial[str, str]) -> float:
        asked.append(trial)
        return next(feed)

    return measure, asked


def test_rejected_runs_are_measured_again_while_the_run_wide_budget_lasts() -> None:
    trials = trial_matrix(["s"], lambda s: ["a", "b"], 1)
    # a: noisy, noisy, quiet (2 retries); b: noisy, then the budget (3) is spent: kept noisy.
    measure, asked = _scripted([-1.0, -2.0, 10.0, -3.0, -4.0])
    sleeps: list[float] = []
    hooks = _Recorder()
    outcome = run_trials(
        trials,
        measure,
        retry=RetryPolicy(budget=3, pause_s=0.5, backoff=1.0),
        rejects=lambda r: r < 0,
        hooks=hooks,
        sleep=sleeps.append,
    )
    assert [t.subject for t in asked] == ["a", "a", "a", "b", "b"]
    assert outcome.results() == [10.0, -4.0]
    assert outcome.discarded_results() == [-1.0, -2.0, -3.0]
    assert [t.subject for t, _ in outcome.discarded] == ["a", "a", "b"]
    assert sleeps == [0.5, 1.0, 1.5, 0.5, 1.0]
    assert hooks.events == [
        ("round", 0),
        ("measured", -1.0),
        ("discarded", -1.0),
        ("measured", -2.0),
        ("discarded", -2.0),
        ("measured", 10.0),
        ("kept", 10.0),
        ("measured", -3.0),
        ("discarded", -3.0),
        ("measured", -4.0),
        ("kept", -4.0),
    ]


def test_without_a_policy_nothing_sleeps_or_retries() -> None:
    trials = trial_matrix(["s"], lambda s: ["a"], 3)
    measure, asked = _scripted([1.0, 2.0, 3.0])
    hooks = _Recorder()

    def no_sleep(seconds: float) -> None:
        raise AssertionError("slept")

    outcome = run_trials(trials, measure, rejects=lambda r: True, hooks=hooks, sleep=no_sleep)
    assert [t.round for t in asked] == [0, 1, 2]
    assert outcome.results() == [1.0, 2.0, 3.0] and outcome.discarded == []
    assert [e for e in hooks.events if e[0] == "round"] == [
        ("round", 0),
        ("round", 1),
        ("round", 2),
    ]
