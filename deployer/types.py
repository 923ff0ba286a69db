"""Value types parsed from the inputs and read by the steps: the bottom layer, so that settings
(which parses them) and the steps (which check them) both import them from here. No I/O."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Expectation:
    """`table>=N` from `smoke-expect`: `table` may be schema-qualified."""

    table: str
    minimum: int

    def __str__(self) -> str:
        return f"{self.table}>={self.minimum}"


@dataclass(frozen=True)
class ExtensionRequirement:
    """`name` or `name>=version` from `required-extensions`."""

    name: str
    min_version: str = ""

    def __str__(self) -> str:
        return f"{self.name}>={self.min_version}" if self.min_version else self.name


def version_tuple(v: str) -> tuple[int, ...]:
    """`0.8.1` → (0, 8, 1); the digits of each part, 0 for a part without any (`1.2beta` → (1, 2))."""
    parts = []
    for p in v.split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)
