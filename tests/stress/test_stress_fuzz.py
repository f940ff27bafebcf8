"""
The hypothesis stateful fuzz of the Ring API (tests/test_model.py: random op sequences,
cancels across rings, dropped buffers and handles, C{gc.collect()}, fork children,
exits, threads, KeyboardInterrupts, checked against a model of the file), run long.

Fast: 10 examples of 40 steps (the default suite runs test_model.py's 30 already).
Full (C{TXURING_STRESS=full}): C{TXURING_STRESS_FUZZ_EXAMPLES} (default 300) examples of
C{TXURING_STRESS_FUZZ_STEPS} (default 80) steps. Ring-level: no reactor involved, so it
runs once, not per reactor.
"""

import os
import time

import pytest
from hypothesis.stateful import run_state_machine_as_test

from stresslib import report, scale
from test_model import RingModel, model_settings

pytestmark = [pytest.mark.stress, pytest.mark.timeout(scale(300, 1800))]


def test_ring_model_long():
    examples = scale(10, int(os.environ.get("TXURING_STRESS_FUZZ_EXAMPLES", "300")))
    steps = scale(40, int(os.environ.get("TXURING_STRESS_FUZZ_STEPS", "80")))
    start = time.monotonic()
    run_state_machine_as_test(RingModel, settings=model_settings(examples, steps))
    report("ring_fuzz", "-", examples=examples, steps_per_example=steps,
           seconds=round(time.monotonic() - start, 1))
