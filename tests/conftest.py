import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One torch thread per xdist worker: two workers × two threads on two cores oversubscribe
    # the CPU, and OpenMP's spinning then slows small problems down tenfold.
    torch.set_num_threads(1)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def tol_for(dtype: torch.dtype) -> float:
    """A residual tolerance each dtype reaches comfortably."""
    return 1e-10 if dtype == torch.float64 else 1e-5
