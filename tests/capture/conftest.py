"""Fixtures of the framework integrations' tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from dbgcli.torch import _stats as stats_module


@pytest.fixture(params=["compiled", "torch"])
def reduction_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on both paths of the hook's statistics: the compiled one-pass kernel
    (float32 in host memory; ``make install`` builds it, so its absence fails here) and
    torch's operations alone."""
    if request.param == "compiled":
        assert stats_module._fused is not None, "dbgcli.torch._fused was not built"
    else:
        monkeypatch.setattr(stats_module, "_fused", None)
    path: str = request.param
    return path


@pytest.fixture
def no_dbg_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail the test if the integration logged a failure (it never raises into the loop)."""
    with caplog.at_level(logging.WARNING, logger="dbgcli"):
        yield
    # The records of the test itself: caplog.records would hold the teardown's, always none.
    records = caplog.get_records("call")
    failures = [r.getMessage() for r in records if r.name.startswith("dbgcli")]
    assert not failures, failures
