"""Each module here exposes ``workloads() -> list[Workload]``; all are collected in name order."""

from __future__ import annotations

import importlib
import pkgutil

from ..harness import Workload


def all_workloads() -> list[Workload]:
    found: list[Workload] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found += module.workloads()
    return found
