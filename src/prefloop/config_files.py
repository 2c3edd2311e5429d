"""Reading configuration files strictly: nothing a person wrote is silently reinterpreted or lost.

- YAML (`load_yaml`): a key given twice in one mapping is an error naming both lines (PyYAML keeps
  the last one without a word). Plain scalars that YAML 1.1 turns into another type (`no` -> False,
  `1.10` -> 1.1, `2024-01-01` -> a date, `null` -> None) come back as `Written(value, text)`, so the
  caller can give a text-valued key the text as written (`written_as`); `plain` drops the wrappers.
  A plain (unquoted) string that holds `${` comes back as `PlainText` (a str), so that config.py types a
  value that is one whole `${NAME}` reference only when it was not quoted.
- JSON (`load_json`): a key given twice in one object is an error naming its lines.

Both raise the caller's error class (ConfigError, DataError) with the file (or "command line") and line.
"""

from __future__ import annotations

import json
import re
import types
import typing
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from prefloop.errors import ConfigError


class Written(NamedTuple):
    """A plain YAML scalar YAML typed as something other than text: the typed value and the text."""

    value: Any
    text: str


class PlainText(str):
    """A plain (unquoted) YAML string holding `${`: a whole `${NAME}` reference in it is typed like a
    `key=value` override (config.py `_interpolate_env`); a quoted one stays text."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and keeps the text of plain non-string scalars."""

    where = "config"
    error: type[Exception] = ConfigError

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults` merges are YAML's own override mechanism
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise self.error(f"{self.where}, line {line}: key {key!r} is given twice (first on line "
                                     f"{seen[key]}); the second would silently replace the first: keep one")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node, deep=False):
        value = super().construct_object(node, deep=deep)
        if (isinstance(node, yaml.ScalarNode) and node.style is None and not isinstance(value, str)
                and node.tag != "tag:yaml.org,2002:str"):
            return Written(value, node.value)
        if isinstance(node, yaml.ScalarNode) and node.style is None and isinstance(value, str) and "${" in value:
            return PlainText(value)
        return value

    def construct_yaml_map(self, node):  # keys must be hashable plain values, never Written
        data = {}
        yield data
        data.update({plain(k): v for k, v in self.construct_mapping(node).items()})


_StrictLoader.add_constructor("tag:yaml.org,2002:map", _StrictLoader.construct_yaml_map)


def load_yaml(text: str, where: str, error: type[Exception] = ConfigError):
    """Parse YAML `text` strictly (see the module docstring); `where` names the file in messages.

    Raises `error` for invalid YAML (with its line) and for a duplicated key."""
    loader = type("Loader", (_StrictLoader,), {"where": where, "error": error})
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        raise error(f"{where}{line}: not valid YAML ({getattr(err, 'problem', err)})") from err


def plain(value):
    """`value` with every `Written` replaced by YAML's typed value (for keys that are not text)."""
    if isinstance(value, Written):
        return value.value
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def _accepts(tp, value) -> bool:
    """Whether declared type `tp` takes `value` as it is (without turning it into text)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, value) for a in args)
    if tp is type(None):
        return value is None
    if origin is typing.Literal:
        return any(a == value and type(a) is type(value) for a in args)
    if origin is list:
        return isinstance(value, list)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(tp, type) and isinstance(value, tp)


def _takes_text(tp) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_takes_text(a) for a in args)
    if origin is typing.Literal:
        return any(isinstance(a, str) for a in args)
    return tp is str


def written_as(value, tp):
    """`value` (from `load_yaml`) for a key of declared type `tp`: a `Written` scalar stays YAML's typed
    value when `tp` takes it (`resume_from_checkpoint: true`), else becomes the text as written when `tp`
    takes text (`save_strategy: no` -> "no", `model_name_or_path: 1.10` -> "1.10"). Lists go element by
    element (`list[str]` elements included); anything else comes back with its wrappers dropped."""
    if isinstance(value, Written):
        if _accepts(tp, value.value):
            return value.value
        return value.text if _takes_text(tp) else value.value
    if isinstance(value, list):
        element = _list_element(tp)
        return [written_as(v, element) if element is not None else plain(v) for v in value]
    return plain(value)


def _list_element(tp):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return args[0]
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if typing.get_origin(arg) is list:
                return typing.get_args(arg)[0]
    return None


def load_json(path: Path, error: type[Exception] = ConfigError):
    """Parse the JSON file at `path`, refusing a key given twice in one object (json keeps the last).

    Raises `error` naming the file, the line(s) and the key; `json.JSONDecodeError` passes through
    for invalid syntax (callers word that one themselves); OSError/UnicodeDecodeError as well."""
    text = Path(path).read_text(encoding="utf-8")

    def refuse_duplicates(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                lines = [text.count("\n", 0, m.start()) + 1
                         for m in re.finditer(r'"' + re.escape(json.dumps(key)[1:-1]) + r'"\s*:', text)]
                where = f"lines {', '.join(map(str, lines))}" if len(lines) > 1 else "line ?"
                raise error(f"{path}: key {key!r} is given twice in one object ({where}); json keeps only the last "
                            f"silently: remove or rename one")
            seen[key] = value
        return seen

    return json.loads(text, object_pairs_hook=refuse_duplicates)
