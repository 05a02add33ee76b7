"""Building a typed :class:`PipelineConfig` from YAML files and ``a.b=c`` overrides.

Strict by design: an unknown key, a wrong type or an invalid value is a :class:`ConfigError` that names
the full dotted key and, for a likely typo, the closest valid key. Configs cross process boundaries (Ray
workers, Tune trials) as plain dicts and are rebuilt here with :func:`from_dict`.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import functools
import hashlib
import inspect
import json
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from leafgen.config.fields import FieldError
from leafgen.config.sections import PipelineConfig
from leafgen.errors import ConfigError

T = TypeVar("T")
ARMS_KEY = "eval.arms"
BASE_KEY = "base"


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> PipelineConfig:
    """Read ``path`` (YAML; None means all defaults), apply dotted overrides and validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(path)
    by_name = [o for o in overrides if o.partition("=")[0].strip().startswith(f"{ARMS_KEY}.")]
    raw = apply_overrides(raw, [o for o in overrides if o not in by_name])
    if by_name and (raw.get("eval") or {}).get("arms") is None:
        # An override names one of the default arms: spell the defaults out so it has one to change.
        arms = from_dict(PipelineConfig, raw).eval.arms
        raw.setdefault("eval", {})["arms"] = [dataclasses.asdict(arm) for arm in arms or ()]
    raw = apply_overrides(raw, by_name)
    return from_dict(PipelineConfig, raw)


def read_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as plain data. A file may name a ``base`` file it extends (a path relative to the
    file): the base is read first and this file's values are merged over it, section by section."""
    path = Path(path)
    if not path.is_file():
        via = f" (the base of {_chain[-1]})" if _chain else ""
        raise ConfigError(f"{path}: config file not found{via}")
    if path.resolve() in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise ConfigError(f"{path}: config files extend each other in a cycle: {cycle}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: {BASE_KEY} must name a config file, got {base!r}")
    return merged(read_yaml(path.parent / base, (*_chain, path.resolve())), data)


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        out[key] = merged(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps the
    last silently; in a config it is always a mistake)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def apply_overrides(raw: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``dotted.key=value`` set; values are parsed as YAML scalars."""
    out = json.loads(json.dumps(raw))  # deep copy; YAML configs are JSON-compatible
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected dotted.key=value, e.g. classifier.epochs=3")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        set_dotted(out, key.strip(), value)
    return out


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` in plain config data, creating missing sections; a list of named mappings (the arms)
    is entered by name: ``eval.arms.augmented.swap_probability``."""
    node: Any = raw
    *parents, leaf = key.split(".")
    for i, part in enumerate(parents):
        if isinstance(node, list):
            node = _named(node, part, ".".join(parents[: i + 1]))
            continue
        child = node.get(part)
        if not isinstance(child, (dict, list)):
            child = node[part] = {}
        node = child
    if isinstance(node, list):
        raise ConfigError(f"{key}: {'.'.join(parents)} is a list of named entries; name one, then its key")
    node[leaf] = value


def _named(items: list[Any], name: str, where: str) -> dict[str, Any]:
    for item in items:
        if isinstance(item, dict) and item.get("name") == name:
            return item
    names = [str(item.get("name")) for item in items if isinstance(item, dict)]
    raise ConfigError(f"{where}: no entry named {name!r}; the entries are: {', '.join(names)}")


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested mapping, checking keys and types recursively."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(_unknown_key_message(prefix + str(unknown[0]), names, prefix))
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except FieldError as exc:
        raise ConfigError(f"{prefix}{exc.field}: {exc.message}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, YAML/JSON-ready dict of a config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def select(cfg: PipelineConfig, dotted: str) -> Any:
    """The value at a dotted key (``data.target_class``) as plain data."""
    node: Any = to_dict(cfg)
    for part in dotted.split("."):
        if isinstance(node, list) and all(isinstance(item, dict) and "name" in item for item in node):
            node = _named(node, part, dotted)
        elif not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{dotted}: no such config key")
        else:
            node = node[part]
    return node


def fingerprint(obj: Any) -> str:
    """Stable short hash of plain data (sorted-key JSON)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def all_keys(cls: type = PipelineConfig, prefix: str = "") -> list[str]:
    """Every leaf dotted key of a config class."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys += all_keys(tp, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field) of a dataclass, by field name."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def explain(cls: type = PipelineConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, type, docstring) for every leaf field, in declaration order."""
    rows: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += explain(tp, f"{prefix}{f.name}.")
            continue
        rows.append((prefix + f.name, _type_name(tp), docs.get(f.name, "")))
        entry = _entry_dataclass(tp)
        if entry is not None:  # a list of recipes (the arms): their fields too
            rows += explain(entry, f"{prefix}{f.name}[].")
    return rows


def _entry_dataclass(tp: Any) -> type | None:
    """The dataclass of a ``tuple[SomeDataclass, ...]`` field (also inside ``| None``), else None."""
    for arg in typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,):
        args = typing.get_args(arg)
        if typing.get_origin(arg) is tuple and len(args) == 2 and dataclasses.is_dataclass(args[0]):
            return args[0]
    return None


def _unknown_key_message(key: str, siblings: list[str], prefix: str) -> str:
    leaf = key[len(prefix) :]
    close = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
    if close:
        return f"{key}: unknown config key; did you mean {prefix}{close[0]}?"
    # The key may sit in the wrong section (classifier.target_class for data.target_class).
    elsewhere = [k for k in all_keys() if k.rsplit(".", 1)[-1] == leaf]
    if elsewhere:
        return f"{key}: unknown config key; did you mean {elsewhere[0]}?"
    return f"{key}: unknown config key; valid keys here: {', '.join(siblings)}"


def _label(value: Any, index: int) -> str:
    name = value.get("name") if isinstance(value, dict) else None
    return str(name) if isinstance(name, str) and name else str(index)


def _type_name(tp: Any) -> str:
    entry = _entry_dataclass(tp)
    if entry is not None:
        return f"list of {entry.__name__}"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, key + ".")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append((arg, exc))
        # The error of the member whose shape the value has (a list's for a list), else the first one.
        shape = tuple if isinstance(value, (list, tuple)) else dict if isinstance(value, dict) else None
        matching = [exc for arg, exc in errors if shape is not None and typing.get_origin(arg) is shape]
        raise (matching or [exc for _, exc in errors])[0]
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            # Entries of a list of named mappings (the arms) are named by their name in messages.
            return tuple(_coerce(v, args[0], f"{key}[{_label(v, i)}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}") if args else v for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads 1e-4 (no dot) as a string; it is a number to whoever wrote it.
            with contextlib.suppress(ValueError):
                return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"config field {key} has an unsupported type {tp!r}")  # a bug in sections.py
