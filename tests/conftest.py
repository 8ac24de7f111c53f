import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Registered here, before hypothesis' pytest plugin reads --hypothesis-profile, so that
# `pytest tests/test_properties.py --hypothesis-profile=slow` finds "slow".
settings.register_profile("default", max_examples=30, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("slow", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("default")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run tests marked slow (large tensors, long fuzzing)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def assert_close(result, expected, dtype, rtol_float32=1e-4):
    """fastconv's accuracy contract: float64 to 1e-10, float32 to 1e-4 of the output's scale."""
    result = np.asarray(result, dtype=np.float64)
    assert result.shape == expected.shape, (result.shape, expected.shape)
    scale = max(1.0, float(np.abs(expected).max())) if expected.size else 1.0
    tol = 1e-10 if np.dtype(dtype) == np.float64 else rtol_float32
    np.testing.assert_allclose(result, expected, rtol=tol, atol=tol * scale)
