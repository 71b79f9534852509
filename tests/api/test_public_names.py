"""The public surface: every name of lowrank_lens.__all__ exists, and none hides a sub-package of the same name
(a function called `train` would make `import lowrank_lens.train.run as m` fail: the attribute lookup finds
the function)."""

from __future__ import annotations

import importlib
import pkgutil

import lowrank_lens as ll


def test_all_names_exist_and_hide_no_subpackage():
    subpackages = {m.name for m in pkgutil.iter_modules(ll.__path__)}
    assert all(hasattr(ll, name) for name in ll.__all__)
    assert not (set(ll.__all__) & subpackages), set(ll.__all__) & subpackages
    for name in subpackages - {"__main__"}:  # a module attribute of the package is the module itself, not an API object
        module = importlib.import_module(f"lowrank_lens.{name}")
        assert getattr(ll, name) is module, name
