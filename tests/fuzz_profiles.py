"""Hypothesis settings profiles shared by every fuzz suite (tests/test_fuzz_*.py).

Why profiles: ``make test`` must stay quick on two shared cores, while ``make fuzz``
runs each target long enough to matter (>= 1,000 cases). ``ARBITER_FUZZ`` picks one:

* ``short`` (the default): 40 cases per target, derandomized so ``make test`` gives the
  same cases on every run (a failure there is reproducible, never flaky);
* ``long`` (``make fuzz``): 1,000 cases per target, random, so each run explores anew.

Neither profile has a deadline (the project has no wall-clock limits in unit tests;
budgets are enforced by the code under test, not by the timer) and neither writes an
example database into the repository. tests/conftest.py imports this module, so the
profile is loaded before any test module is collected.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

#: examples per target in each profile
SHORT_EXAMPLES = 40
LONG_EXAMPLES = 1000

_COMMON = {
    "deadline": None,
    "database": None,  # nothing written into the repo (.hypothesis/ is ignored as well)
    "print_blob": True,  # a failure prints the @reproduce_failure line
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
}

# hypothesis keeps caches (constants, unicode tables) even without a database: not in the repo
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "arbiter-hypothesis")

settings.register_profile("short", max_examples=SHORT_EXAMPLES, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=LONG_EXAMPLES, **_COMMON)

PROFILE = os.environ.get("ARBITER_FUZZ", "short")
if PROFILE not in ("short", "long"):
    raise RuntimeError(f"ARBITER_FUZZ must be 'short' or 'long'; got {PROFILE!r}")
settings.load_profile(PROFILE)
