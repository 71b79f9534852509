"""Analysis tests run torch single-threaded: on the shared 2-core machine, 2-thread intra-op
parallelism under load from other processes made a tiny-model HVP ~70x slower (0.07 s -> 5 s).
The setting is restored after each test, so nothing leaks into other test directories."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from lens_testutil import one_torch_thread


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    with one_torch_thread():
        yield
