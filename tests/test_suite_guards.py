"""The test suite's own guards: optional reference packages cannot be skipped silently in CI, and the
offline fixture really sees network attempts (so "no attempt" assertions can fail)."""

from __future__ import annotations

import socket

import pytest
from lens_testutil import require_package


def test_missing_optional_package_skips_elsewhere_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("LOWRANK_LENS_REQUIRE_OPTIONAL", raising=False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="optional dependency missing: no_such_package_xyz"):
        require_package("no_such_package_xyz", "pip install it")
    for var, value in (("LOWRANK_LENS_REQUIRE_OPTIONAL", "1"), ("CI", "true")):
        with monkeypatch.context() as m:
            m.setenv(var, value)
            with pytest.raises(pytest.fail.Exception, match="no_such_package_xyz"):
                require_package("no_such_package_xyz", "pip install it")
    require_package("numpy", "never needed")  # present: neither skips nor fails


def test_network_attempts_fixture_records_and_refuses(network_attempts: list):
    with pytest.raises(OSError):
        socket.create_connection(("192.0.2.1", 9), timeout=0.01)  # TEST-NET-1: never routed anyway
    with pytest.raises(OSError):
        socket.getaddrinfo("huggingface.co", 443)
    assert len(network_attempts) == 2
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=1)  # loopback stays allowed
    client.close()
    server.close()
    assert len(network_attempts) == 2
