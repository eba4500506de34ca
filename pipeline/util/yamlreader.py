"""Typed reading of YAML files: every error names the key path and its line.

Anchors and aliases are refused while scanning, before anything is built: an
alias bomb (a few hundred bytes that expand to gigabytes) costs nothing.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError

MAX_YAML_BYTES = 1024 * 1024
MAX_DEPTH = 32  # kpipe's own files nest 4 deep; 20,000 brackets would exhaust Python's stack
MAX_SCALAR_CHARS = 4096  # longer than any path or setting; a 5000-digit number never reaches int()
_OPEN = (yaml.FlowSequenceStartToken, yaml.FlowMappingStartToken, yaml.BlockSequenceStartToken,
         yaml.BlockMappingStartToken)
_CLOSE = (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken, yaml.BlockEndToken)
# The files kpipe ships beside the package (vm-templates/, patches/): found from any pipeline.yaml.
SHIPPED = Path(__file__).resolve().parents[2]


class Lines:
    """Maps key paths (``candidates[2].changes[0]``) to source lines."""

    def __init__(self, text: str):
        self.lines: dict[str, int] = {}
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            self._walk(node, "")

    def _walk(self, node: yaml.Node, path: str) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = f"{path}.{key.value}" if path else str(key.value)
                self.lines[sub] = key.start_mark.line + 1
                self._walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, f"{path}[{i}]")

    def of(self, path: str) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            shorter = re.sub(r"(\.[^.\[]+|\[\d+\])$", "", path)
            path = "" if shorter == path else shorter  # a top-level key that is not in the file
        return None


class Reader:
    """Typed accessors that raise ConfigError with path and line."""

    def __init__(self, source: Path, lines: Lines, root: Path):
        self.source, self.lines, self.root = source, lines, root

    def error(self, path: str, message: str) -> ConfigError:
        return ConfigError(path, message, self.source.name, self.lines.of(path))

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.error(path, f"expected a mapping, got {type(value).__name__}")
        for key in value:
            if key not in allowed:
                raise self.error(f"{path}.{key}" if path else str(key),
                                 f"unknown key; valid keys: {', '.join(allowed)}")
        for key in required:
            if key not in value:
                raise self.error(path or key, f"missing required key '{key}'")
        return value

    def typed(self, value: Any, path: str, kind: type | tuple, check: Callable[[Any], bool] | None = None,
              hint: str = "") -> Any:
        if isinstance(value, bool) and kind in (int, float):
            raise self.error(path, f"expected {kind.__name__}, got a boolean")
        if kind is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, kind):
            name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.error(path, f"expected {name}, got {type(value).__name__} {value!r}")
        if check and not check(value):
            raise self.error(path, f"invalid value {value!r}" + (f": {hint}" if hint else ""))
        return value

    def existing_file(self, value: Any, path: str) -> Path:
        """A file relative to the config's folder; a relative path not found there is looked up among the
        files kpipe ships (vm-templates/, patches/), so a pipeline.yaml kept anywhere can use them."""
        text = self.typed(value, path, str)
        resolved = (self.root / os.path.expanduser(text)).resolve()
        if not resolved.is_file() and not os.path.isabs(os.path.expanduser(text)):
            shipped = (SHIPPED / text).resolve()
            if shipped.is_file() and shipped.is_relative_to(SHIPPED.resolve()):
                return shipped
        if not resolved.is_file():
            raise self.error(path, f"{text} does not exist")
        return resolved

    def settings(self, data: Any, path: str, cls: type, converters: dict[str, Callable[[Any, str], Any]]) -> Any:
        mapping = self.mapping(data, path, tuple(converters))
        kwargs = {k: converters[k](v, f"{path}.{k}") for k, v in mapping.items()}
        return cls(**kwargs)


def positive(r: Reader) -> Callable[[Any, str], int]:
    """A setting check: an integer of at least 1."""
    return lambda v, p: r.typed(v, p, int, lambda x: x > 0, "must be > 0")


def non_negative(r: Reader) -> Callable[[Any, str], int]:
    """A setting check: an integer of at least 0."""
    return lambda v, p: r.typed(v, p, int, lambda x: x >= 0, "must be >= 0")



def read_yaml(path: str | Path, what: str) -> tuple[Any, Reader]:
    """A YAML file and a Reader over it that names key and line in its errors (duplicate keys refused)."""
    source = Path(path).resolve()
    if not source.is_file():
        raise ConfigError("", f"{what} {path} not found")
    if source.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError("", f"{what} {path} is larger than {MAX_YAML_BYTES // 1024} KiB")
    try:
        text = source.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"{what} {path} is not UTF-8 text (byte {exc.start})") from None
    try:
        _check_tokens(text, source.name)
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
        lines = Lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError("", f"not valid YAML: {getattr(exc, 'problem', exc)}", source.name,
                          mark.line + 1 if mark else None) from None
    return data, Reader(source, lines, source.parent)


def _check_tokens(text: str, name: str) -> None:
    """Refuse, before anything is built: anchors and aliases, nesting deeper than MAX_DEPTH, scalars
    longer than MAX_SCALAR_CHARS."""
    depth = 0
    for token in yaml.scan(text, Loader=yaml.SafeLoader):
        line = token.start_mark.line + 1
        if isinstance(token, (yaml.AliasToken, yaml.AnchorToken)):
            raise ConfigError("", "YAML anchors and aliases (&name, *name) are not accepted here; "
                              "write the values out", name, line)
        if isinstance(token, _OPEN):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError("", f"nested deeper than {MAX_DEPTH} levels", name, line)
        elif isinstance(token, _CLOSE):
            depth -= 1
        elif isinstance(token, yaml.ScalarToken) and len(token.value) > MAX_SCALAR_CHARS:
            raise ConfigError("", f"a value of {len(token.value)} characters (at most {MAX_SCALAR_CHARS})",
                              name, line)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:  # type: ignore[override]
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {str(key)[:80]!r} given twice (first on line {seen[key]})",
                        key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
            except TypeError:
                pass  # an unhashable key: the constructor below reports it
        return super().construct_mapping(node, deep=deep)

