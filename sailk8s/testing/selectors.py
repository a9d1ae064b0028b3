"""Label and field selectors as the Kubernetes API server parses and matches them."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sailk8s.errors import ConfigError

_SET_RE = re.compile(r"^\s*(!?)([A-Za-z0-9._/-]+)\s+(in|notin)\s*\((.*)\)\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9._/-]+)\s*(==|!=|=)\s*([A-Za-z0-9._-]*)\s*$")
_EXISTS_RE = re.compile(r"^\s*(!?)([A-Za-z0-9._/-]+)\s*$")


class SelectorError(ConfigError):
    """A selector string the API server would reject with 400 BadRequest."""


@dataclass(frozen=True)
class Requirement:
    """One clause of a label selector: key, operator and values."""

    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """True when the labels satisfy this clause."""
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "=":
            return present and value == self.values[0]
        if self.op == "!=":
            return not present or value != self.values[0]
        if self.op == "in":
            return present and value in self.values
        if self.op == "notin":
            return not present or value not in self.values
        if self.op == "exists":
            return present
        return not present  # "!"


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside `( ... )`, as `a in (x,y),b` needs."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part for part in parts if part.strip()]


def parse_label_selector(text: str | None) -> list[Requirement]:
    """Parse `a=b,c!=d,e in (x,y),f notin (z),g,!h` into requirements."""
    if not text:
        return []
    requirements: list[Requirement] = []
    for clause in _split_top_level(text):
        set_match = _SET_RE.match(clause)
        if set_match:
            if set_match.group(1):
                raise SelectorError(f"unable to parse requirement: {clause!r}")
            values = tuple(v.strip() for v in set_match.group(4).split(",") if v.strip())
            requirements.append(Requirement(set_match.group(2), set_match.group(3), values))
            continue
        eq_match = _EQ_RE.match(clause)
        if eq_match:
            op = "!=" if eq_match.group(2) == "!=" else "="
            requirements.append(Requirement(eq_match.group(1), op, (eq_match.group(3),)))
            continue
        exists_match = _EXISTS_RE.match(clause)
        if exists_match:
            op = "!" if exists_match.group(1) else "exists"
            requirements.append(Requirement(exists_match.group(2), op))
            continue
        raise SelectorError(f"unable to parse requirement: {clause!r}")
    return requirements


def labels_match(requirements: list[Requirement], labels: Mapping[str, str] | None) -> bool:
    """True when every requirement holds for the labels."""
    present = labels or {}
    return all(req.matches(present) for req in requirements)


def _field_value(obj: Mapping[str, Any], path: str) -> str | None:
    """Read a dotted field (`metadata.name`, `status.phase`) as the string the server compares."""
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    if node is None:
        return None
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


def parse_field_selector(text: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """Parse `metadata.name=x,status.phase!=Running` into a predicate on objects."""
    if not text:
        return lambda obj: True
    clauses: list[tuple[str, bool, str]] = []
    for clause in _split_top_level(text):
        match = _EQ_RE.match(clause)
        if not match:
            raise SelectorError(f"invalid field selector: {clause!r}")
        clauses.append((match.group(1), match.group(2) != "!=", match.group(3)))

    def predicate(obj: Mapping[str, Any]) -> bool:
        for path, equal, value in clauses:
            actual = _field_value(obj, path) or ""
            if (actual == value) != equal:
                return False
        return True

    return predicate
