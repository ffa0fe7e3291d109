"""Finds every compression method in this package and builds one from a name and string options.

Adding a method touches one file: drop ``kernels/<name>.py`` holding a :class:`~.base.Method` subclass with a
``name``; the CLI's ``--method`` choices, the contract tests and the benchmarks loop over :func:`methods`.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from .base import Method
from .errors import MethodError

# Modules that hold building blocks, not methods (and GPU kernels, which import triton).
_NOT_METHODS = {"base", "errors", "registry", "ops", "dispatch", "tokens", "traits", "types"}


@cache
def methods() -> dict[str, type[Method]]:
    """Every registered method class by name, in a stable order."""
    found: dict[str, type[Method]] = {}
    for info in sorted(pkgutil.iter_modules(_package_path()), key=lambda m: m.name):
        if info.name in _NOT_METHODS or info.name.startswith("_") or info.name.endswith("_triton"):
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Method) and obj.name and obj.__module__ == module.__name__:
                found[obj.name] = obj
    return dict(sorted(found.items()))


def _package_path() -> list[str]:
    return list(importlib.import_module(__package__).__path__)


def build(
    name: str, keep: float, *, model_type: str | None = None, options: Mapping[str, Any] | None = None
) -> Method:
    """Build method ``name`` at ratio ``keep``: the model's recipe first, then ``options`` (strings are parsed)."""
    registry = methods()
    if name not in registry:
        raise MethodError(f"unknown method {name!r}; choose one of: {', '.join(registry)}")
    cls = registry[name]
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "keep"}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = dict(cls.recipes.get(model_type or "", {}))
    for key, raw in (options or {}).items():
        if key not in fields:
            valid = ", ".join(fields) or "none"
            raise MethodError(f"method {name!r} has no option {key!r}; its options are: {valid}")
        values[key] = parse_value(hints[key], raw, f"{name}.{key}")
    try:
        return cls(keep=keep, **values)
    except MethodError:
        raise
    except (TypeError, ValueError) as exc:
        raise MethodError(f"bad options for method {name!r}: {exc}") from None


def option_defaults(name: str, model_types: Iterable[str] = ()) -> dict[str, str]:
    """Each option of method ``name`` -> the default a run uses, as text: the value once the method has resolved it
    (its ``__post_init__``) over each model family's recipe, e.g. ``"1.0"``, or per family where they differ,
    ``"attn_div_v2 (llava_onevision), attn_div (qwen2_5_vl, qwen3_vl)"``. ``model_types``: the families to
    resolve for (default: those with a recipe, else none). The method's ``option_notes`` follow the value in
    parentheses, or replace a None that is only resolved at run time (e.g. from the model's depth). Raises
    MethodError for an unknown method."""
    registry = methods()
    if name not in registry:
        raise MethodError(f"unknown method {name!r}; choose one of: {', '.join(registry)}")
    cls = registry[name]
    types: list[str | None] = list(model_types) or list(cls.recipes) or [None]
    resolved = {t: build(name, cls.keep, model_type=t).options() for t in types}
    out: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        if f.name == "keep":
            continue
        by_value: dict[str, list[str]] = {}
        for t, options in resolved.items():
            by_value.setdefault(str(options[f.name]), []).append(t or "")
        text = next(iter(by_value)) if len(by_value) == 1 else ", ".join(
            f"{value} ({', '.join(which)})" for value, which in by_value.items())
        note = cls.option_notes.get(f.name)
        if note:
            text = note if text == "None" else f"{text} ({note})"
        out[f.name] = text
    return out


def parse_value(hint: Any, raw: Any, label: str) -> Any:
    """Turn a ``--opt key=value`` string into the field's type (bool, int, float, str, or Optional/Literal of them)."""
    if not isinstance(raw, str):
        return raw
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        if raw not in [str(a) for a in args]:
            raise MethodError(f"{label} must be one of {', '.join(map(str, args))}, got {raw!r}")
        return next(a for a in args if str(a) == raw)
    if args and type(None) in args:  # Optional[X]
        if raw.lower() in {"none", "null", ""}:
            return None
        return parse_value(next(a for a in args if a is not type(None)), raw, label)
    try:
        if hint is bool:
            lowered = raw.lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError
        if hint in (int, float, str):
            return hint(raw)
    except ValueError:
        raise MethodError(f"{label} expects {getattr(hint, '__name__', hint)}, got {raw!r}") from None
    return raw
