"""Retry delays: `retry.max` is the upper bound, jitter included (property tests)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.blueprint.model import RetryPolicy

policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 100),
    backoff=st.sampled_from(["fixed", "linear", "exponential"]),
    initial=st.floats(0.001, 100),
    max=st.floats(0.001, 1000),
    jitter=st.floats(0, 1),
)


@given(policy=policies, attempt=st.integers(1, 200), spread=st.floats(-1, 1))
def test_a_delay_never_passes_max_whatever_the_jitter(
    policy: RetryPolicy, attempt: int, spread: float
) -> None:
    assert 0.0 <= policy.delay(attempt, spread) <= policy.max


@given(spread=st.floats(-1, 1))
def test_jitter_still_spreads_delays_at_the_cap(spread: float) -> None:
    # the example of the report: max 1s, jitter 0.5, a base already at the cap
    policy = RetryPolicy(backoff="fixed", initial=1.0, max=1.0, jitter=0.5)
    assert policy.delay(5, spread) == min(1.0, 1.0 + 0.5 * spread)
    assert policy.delay(5, -1.0) == 0.5  # jitter below the cap is kept
