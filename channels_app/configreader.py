"""How the configuration file is read: declared keys, the YAML loader that reports duplicate keys, and
a reader that converts raw values to their declared types, interpolates ``${VAR}`` and collects every
problem with its key path and a fix. ``config.py`` declares the sections and keys with it.

This module is imported by the settings module, so it must not import Django.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import yaml

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """The configuration file cannot be used; ``problems`` lists every mistake found."""

    def __init__(self, path: str, problems: list[tuple[str, str]]):
        self.path = path
        self.problems = problems
        count = len(problems)
        lines = [f"{path}: {count} configuration problem{'s' if count != 1 else ''}:"]
        lines += [f"  - {key}: {message}" if key else f"  - {message}" for key, message in problems]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Key:
    """One configuration key: its type, default and one-line documentation."""

    name: str
    kind: str  # "bool", "int", "number", "str", "str_list", "choice"
    default: Any
    doc: str
    required: bool = False
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    check: Callable[[Any], str | None] | None = None


# The Python type of each kind of key.
KIND_TYPES = {"bool": bool, "int": int, "number": float, "str": str, "str_list": tuple[str, ...], "choice": str}
_KEY = "config_key"


def config_key(
    kind: str,
    default: Any,
    doc: str,
    *,
    choices: tuple[str, ...] = (),
    minimum: float | None = None,
    check: Callable[[Any], str | None] | None = None,
) -> Any:
    """A section dataclass's field declared as a configuration key named after the field."""
    return field(metadata={_KEY: Key("", kind, default, doc, choices=choices, minimum=minimum, check=check)})


def keys_of(section: type) -> tuple[Key, ...]:
    """The keys a section dataclass declares, in order (its other fields are subsections)."""
    return tuple(replace(item.metadata[_KEY], name=item.name) for item in fields(section) if _KEY in item.metadata)


def load_yaml(text: str, path: str, problems: list[tuple[str, str]]) -> Any:
    """Parse with the safe loader; duplicate keys become problems (with their key path) instead of
    silently keeping the last value, so they are reported together with every other mistake."""
    loader = None
    try:
        # The reader checks the text for characters YAML forbids already when it is created.
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _find_duplicate_keys(loader, node, "", problems, set())
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(path, [*problems, ("", f"not valid YAML: {_describe_yaml_error(exc)}")]) from exc
    except RecursionError as exc:
        # PyYAML composes and constructs recursively: a few thousand nested brackets overflow the stack.
        raise ConfigError(path, [*problems, ("", "not valid YAML: it is nested too deeply")]) from exc
    finally:
        if loader is not None:
            loader.dispose()


def _find_duplicate_keys(
    loader: yaml.SafeLoader, node: yaml.Node, key_path: str, problems: list[tuple[str, str]], seen: set[int]
) -> None:
    # Anchored nodes are shared (and may even contain themselves), so each node is walked once.
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _find_duplicate_keys(loader, item, f"{key_path}[{index}]", problems, seen)
        return
    if not isinstance(node, yaml.MappingNode):
        return
    first_line: dict[Any, int] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        child_path = f"{key_path}.{key}" if key_path else str(key)
        line = key_node.start_mark.line + 1
        if key in first_line:
            problems.append(
                (
                    child_path,
                    f"appears twice (lines {first_line[key]} and {line}): each key may appear once, delete one of them",
                )
            )
        else:
            first_line[key] = line
        _find_duplicate_keys(loader, value_node, child_path, problems, seen)


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return problem


class Reader:
    """Walks raw YAML values, converting them to declared types and collecting problems."""

    def __init__(self, problems: list[tuple[str, str]], environ: Mapping[str, str]):
        self.problems = problems
        self.environ = environ

    def mapping(self, key_path: str, raw: Any) -> dict:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problems.append((key_path, f"must be a mapping of keys, not {yaml_type(raw)}"))
            return {}
        return raw

    def reject_unknown(self, key_path: str, raw: dict, known: tuple[str, ...]) -> None:
        for key in raw:
            if key in known:
                continue
            where = f"{key_path}.{key}" if key_path else str(key)
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"remove it; the keys here are {', '.join(known)}"
            self.problems.append((where, f"unknown key: {hint}"))

    def section(self, key_path: str, raw: dict, keys: tuple[Key, ...], extra: tuple[str, ...] = ()) -> dict[str, Any]:
        self.reject_unknown(key_path.replace(".<name>", ""), raw, tuple(k.name for k in keys) + extra)
        values: dict[str, Any] = {}
        for key in keys:
            where = f"{key_path}.{key.name}"
            if key.name not in raw or raw[key.name] is None:
                if key.required:
                    self.problems.append((where, f"is missing: add  {key.name}: {_example(key)}  ({key.doc})"))
                values[key.name] = key.default
                continue
            values[key.name] = self.value(where, key, raw[key.name])
        return values

    def value(self, where: str, key: Key, raw: Any) -> Any:
        interpolated = False
        if isinstance(raw, str):
            raw, interpolated = self.interpolate(where, raw)
            if raw is None:
                return key.default
        elif isinstance(raw, list):
            items = [self.interpolate(where, item)[0] if isinstance(item, str) else item for item in raw]
            if any(item is None and original is not None for item, original in zip(items, raw, strict=True)):
                return key.default
            raw = items
        converted, problem = _convert(key, raw, from_environment=interpolated)
        if problem is None and key.check is not None:
            problem = key.check(converted)
        if problem is not None:
            self.problems.append((where, problem))
            return key.default
        return converted

    def interpolate(self, where: str, text: str) -> tuple[str | None, bool]:
        missing: list[str] = []

        def replace(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in self.environ:
                return self.environ[name]
            if default is not None:
                return default
            missing.append(name)
            return ""

        result = _ENV_REFERENCE.sub(replace, text)
        for name in missing:
            self.problems.append(
                (where, f"environment variable {name} is not set: set it, or write ${{{name}:-default}}")
            )
        return (None if missing else result), result != text


def _example(key: Key) -> str:
    if key.kind == "choice":
        return " or ".join(f'"{choice}"' for choice in key.choices)
    return '"..."'


def _unquoted_hint(key: Key, raw: Any) -> str:
    """Point out a value quoted in the file ("true", "100") that would be right without the quotes."""
    if not isinstance(raw, str):
        return ""
    try:
        unquoted = yaml.safe_load(raw)
    except (yaml.YAMLError, RecursionError):
        return ""
    fits = {
        "bool": isinstance(unquoted, bool),
        "int": isinstance(unquoted, int) and not isinstance(unquoted, bool),
        "number": isinstance(unquoted, int | float) and not isinstance(unquoted, bool),
    }
    return f": write {raw.strip()} without quotes" if fits.get(key.kind) else ""


def yaml_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "a mapping"}
    return names.get(type(value), type(value).__name__) + f" ({value!r})"


def _convert(key: Key, raw: Any, *, from_environment: bool) -> tuple[Any, str | None]:
    if key.kind == "bool":
        if isinstance(raw, bool):
            return raw, None
        if from_environment and isinstance(raw, str) and raw.lower() in ("true", "false", "1", "0"):
            return raw.lower() in ("true", "1"), None
        hint = "" if from_environment else _unquoted_hint(key, raw)
        return None, f"must be true or false, not {yaml_type(raw)}{hint}"
    if key.kind in ("int", "number"):
        if from_environment and isinstance(raw, str):
            try:
                raw = int(raw) if key.kind == "int" else float(raw)
            except ValueError:
                pass
        valid_types = (int,) if key.kind == "int" else (int, float)
        if isinstance(raw, bool) or not isinstance(raw, valid_types):
            kind = "a whole number" if key.kind == "int" else "a number"
            return None, f"must be {kind}, not {yaml_type(raw)}{'' if from_environment else _unquoted_hint(key, raw)}"
        if not math.isfinite(raw):
            return None, f"must be a finite number, not {raw!r}"
        if key.minimum is not None and raw < key.minimum:
            bound = int(key.minimum) if key.minimum == int(key.minimum) else key.minimum
            article = "a positive" if key.minimum > 0 else "a non-negative"
            return (
                None,
                f"must be {article} {'integer' if key.kind == 'int' else 'number'} (at least {bound}), not {raw!r}",
            )
        return raw, None
    if key.kind == "choice":
        if isinstance(raw, str) and raw in key.choices:
            return raw, None
        if isinstance(raw, str) and raw.upper() in key.choices:
            return None, f"must be written in capitals: {raw.upper()!r}"
        options = " or ".join(f'"{choice}"' for choice in key.choices)
        return None, f"must be {options}, not {raw!r}"
    if key.kind == "str":
        if isinstance(raw, str):
            return raw, None
        return None, f"must be a string, not {yaml_type(raw)}: put it in quotes"
    if key.kind == "str_list":
        if isinstance(raw, str) and from_environment:
            return tuple(part.strip() for part in raw.split(",") if part.strip()), None
        if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
            return tuple(raw), None
        return None, f'must be a list of strings, such as  ["a", "b"],  not {yaml_type(raw)}'
    raise ValueError(f"unknown key kind {key.kind!r}: use one of bool, int, number, str, str_list, choice")
