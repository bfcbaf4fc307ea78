"""Every public name has a docstring: the package's ``__all__`` and the public methods and
properties of its classes, ``moengage_personalize.aio`` and ``moengage_personalize.contrib``."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

MODULES = [
    "moengage_personalize",
    "moengage_personalize.aio",
    "moengage_personalize.contrib",
    "moengage_personalize.contrib.wsgi",
    "moengage_personalize.contrib.django",  # imports without Django: Django is loaded lazily
]


def documented(obj: Any) -> bool:
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    return bool(doc and doc.strip())


def members(cls: type) -> Iterator[tuple[str, Any]]:
    """The public methods and properties ``cls`` itself defines (not inherited ones)."""
    for name, raw in vars(cls).items():
        if name.startswith("_"):
            continue
        attr = raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw
        if inspect.isfunction(attr) or isinstance(attr, property):
            yield name, attr


def public_objects(module: ModuleType) -> Iterator[tuple[str, Any]]:
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            yield f"{module.__name__}.{name}", obj
            if inspect.isclass(obj):
                for member, attr in members(obj):
                    yield f"{module.__name__}.{name}.{member}", attr


@pytest.mark.parametrize("module_name", MODULES)
def test_public_names_have_docstrings(module_name: str) -> None:
    """The module, each class and function in its __all__, and their public methods and
    properties have a non-empty docstring."""
    module = importlib.import_module(module_name)
    assert documented(module), module_name
    missing = [name for name, obj in public_objects(module) if not documented(obj)]
    assert missing == []


def test_the_check_sees_the_whole_surface() -> None:
    """The walk reaches the client's methods (so an empty result means something)."""
    module = importlib.import_module("moengage_personalize")
    names = {name for name, _ in public_objects(module)}
    assert "moengage_personalize.MoEngagePersonalize.fetch_experience" in names
    assert "moengage_personalize.ExperienceCampaignsResult.get" in names
    aio = {name for name, _ in public_objects(importlib.import_module(MODULES[1]))}
    assert "moengage_personalize.aio.AsyncMoEngagePersonalize.aclose" in aio
