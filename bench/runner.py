"""Rounds of measurements, shared by the benchmarks that compare subjects side by side.

A benchmark names its scenarios (what is measured) and, for each, its subjects
(the servers or conditions compared). `trial_matrix` lays the runs out round by
round: every scenario and subject once per round, so that the subjects of a
scenario are measured back to back and slow drifts of the machine hit them
alike. `run_trials` takes them in that order, pausing before each, measuring
again a run the benchmark rejects (other load on the machine) while a retry
budget for the whole run lasts, and tells `RunHooks` what happened.

The layout and the retry policy are pure; `run_trials` sleeps and calls the
benchmark's `measure`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

S = TypeVar("S")  # a scenario
K = TypeVar("K")  # a subject
R = TypeVar("R")  # what one measurement returns


@dataclass(frozen=True)
class Trial(Generic[S, K]):
    """One measurement to take: `subject` under `scenario`, in round `round` (from 0)."""

    scenario: S
    subject: K
    round: int


def trial_matrix(
    scenarios: Iterable[S], subjects: Callable[[S], Iterable[K]], rounds: int
) -> list[Trial[S, K]]:
    """Round by round; in each, scenario by scenario; in each, every subject in turn."""
    plan = [(scenario, list(subjects(scenario))) for scenario in scenarios]
    return [
        Trial(scenario, subject, round_)
        for round_ in range(rounds)
        for scenario, keys in plan
        for subject in keys
    ]


@dataclass(frozen=True)
class RetryPolicy:
    """How many runs may be measured again, over the whole run, and the pauses between.

    Before attempt `n` (0 for a run's first) the runner waits
    `pause_s * (1 + backoff * n)`: a moment to settle, longer after other load.
    """

    budget: int = 0
    pause_s: float = 0.0
    backoff: float = 3.0

    def pause_before(self, attempt: int) -> float:
        return self.pause_s * (1 + self.backoff * attempt)


@dataclass
class RetryBudget:
    """What is left of a `RetryPolicy.budget` during one run."""

    remaining: int

    def spend(self) -> bool:
        """One more attempt, if any is left."""
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True


class RunHooks(Generic[S, K, R]):
    """What a benchmark prints as the run goes; every method does nothing by default."""

    def round_started(self, round_: int) -> None:
        """Before the first trial of each round."""

    def measured(self, trial: Trial[S, K], result: R) -> None:
        """After every attempt, kept or about to be measured again."""

    def discarded(self, trial: Trial[S, K], result: R) -> None:
        """An attempt rejected and measured again."""

    def kept(self, trial: Trial[S, K], result: R) -> None:
        """The attempt that stands for the trial."""


@dataclass
class RunOutcome(Generic[S, K, R]):
    """Every trial's kept result, in run order, and the attempts measured again."""

    kept: list[tuple[Trial[S, K], R]] = field(default_factory=list)
    discarded: list[tuple[Trial[S, K], R]] = field(default_factory=list)

    def results(self) -> list[R]:
        return [result for _, result in self.kept]

    def discarded_results(self) -> list[R]:
        return [result for _, result in self.discarded]


def _never(result: object) -> bool:
    return False


def run_trials(
    trials: Sequence[Trial[S, K]],
    measure: Callable[[Trial[S, K]], R],
    *,
    retry: RetryPolicy | None = None,
    rejects: Callable[[R], bool] = _never,
    hooks: RunHooks[S, K, R] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> RunOutcome[S, K, R]:
    """Measure every trial in order; a rejected result is measured again while budget lasts.

    When the budget is spent, a rejected result is kept (and the caller can
    still see it was noisy).
    """
    policy = retry or RetryPolicy()
    budget = RetryBudget(policy.budget)
    notify: RunHooks[S, K, R] = hooks or RunHooks()
    outcome: RunOutcome[S, K, R] = RunOutcome()
    current_round: int | None = None
    for trial in trials:
        if trial.round != current_round:
            current_round = trial.round
            notify.round_started(trial.round)
        attempt = 0
        while True:
            pause = policy.pause_before(attempt)
            if pause > 0:
                sleep(pause)
            result = measure(trial)
            notify.measured(trial, result)
            if not rejects(result) or not budget.spend():
                break
            outcome.discarded.append((trial, result))
            notify.discarded(trial, result)
            attempt += 1
        outcome.kept.append((trial, result))
        notify.kept(trial, result)
    return outcome
