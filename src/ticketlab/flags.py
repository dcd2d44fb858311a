"""Command-line options generated from the fields of an experiment config.

Every field of a config (and of the configs nested in it: data, model, train, prune; and of every options
class of the method options field, see ``config.options_field``) is one option; a method's option given
with another method is refused (``--delta-t applies to set/rigl, not gmp``).
Its metadata (written with ``config.option``) gives the help text and, where the field name is not the
option's, the ``flag`` and ``dest``; the kind of option follows the field's type:

- ``bool``: a switch, ``--name``; or ``--no-name`` (``flag`` may say otherwise) when it is True by default;
- ``Literal[...]`` or ``choices``: one of those values;
- ``tuple[str, ...]``: several values (``nargs``, default "+"), or a repeated flag (``action="append"``);
- ``dict``: repeated ``KEY=VALUE`` pairs, the values read as JSON;
- ``int`` / ``float`` / ``str`` (step strings stay strings; the config parses them).

The help text ends with the default a run really gets: the command's own base (the demo's), else the
field's. Values are layered: the config's defaults <- the command's base <- ``--preset`` <- the
flags given. Every flag defaults to None ("not given"), so a preset only fills what is left out,
and a config built from a command line is the one an explicit constructor call would build.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config import ConfigError, option_classes


@dataclass(frozen=True)
class Option:
    """One command-line option bound to one config field."""

    path: tuple[str, ...]      # where the field sits: ("train", "lr"), ("levels",)
    dest: str                  # its key in the parsed arguments and in presets: "lr", "dataset"
    flag: str                  # "--lr", "--dataset", "--no-prune-first"
    field: dataclasses.Field
    kind: Any                  # the field's type, without "| None"
    group: str                 # the --help section
    methods: tuple[str, ...] = ()     # a method's option: the methods it applies to ("set", "rigl")
    options_cls: type | None = None   # ... and the options dataclass it is a field of

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.field.metadata

    @property
    def default(self) -> Any:
        f = self.field
        return f.default_factory() if f.default is dataclasses.MISSING else f.default

    @property
    def choices(self) -> tuple[Any, ...] | None:
        choices = self.meta.get("choices")
        if callable(choices):
            return tuple(choices())
        if choices is None and typing.get_origin(self.kind) is typing.Literal:
            return typing.get_args(self.kind)
        return choices


def options(config_cls: type, group: str) -> list[Option]:
    """The options of a config class, nested configs included, in field order."""
    found: list[Option] = []
    _collect(config_cls, (), group, found)
    seen: dict[str, Option] = {}
    for o in found:
        for key in (o.dest, o.flag):
            if key in seen:
                raise TypeError(f"{config_cls.__name__}: {'.'.join(o.path)} and {'.'.join(seen[key].path)} both "
                                f"map to {key!r}; give one of them another 'flag' / 'dest' in its metadata")
            seen[key] = o
    return found


def _collect(cls: type, prefix: tuple[str, ...], group: str, out: list[Option]) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "options" in f.metadata:  # the method's options (config.options_field): every class's fields
            for options_cls, methods in option_classes(f.metadata["options"]):
                for o in _fields_of(options_cls, (*prefix, f.name), group):
                    out.append(dataclasses.replace(o, methods=methods, options_cls=options_cls))
            continue
        if not f.metadata.get("cli", True):  # e.g. a nested config set by the procedure itself
            continue
        kind = _without_none(hints[f.name])
        if dataclasses.is_dataclass(kind):
            _collect(kind, (*prefix, f.name), getattr(kind, "cli_group", group), out)
            continue
        if "help" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} has no help text: give it one with config.option(default, help)")
        dest = f.metadata.get("dest", f.name)
        default_on = kind is bool and f.default is True
        flag = f.metadata.get("flag") or ("--no-" if default_on else "--") + dest.replace("_", "-")
        out.append(Option((*prefix, f.name), dest, flag, f, kind, f.metadata.get("group", group)))


def _fields_of(cls: type, prefix: tuple[str, ...], group: str) -> list[Option]:
    found: list[Option] = []
    _collect(cls, prefix, group, found)
    return found


def _without_none(kind: Any) -> Any:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return kind


def _is_dict(kind: Any) -> bool:
    return kind is dict or typing.get_origin(kind) is dict


def _kv(text: str) -> tuple[str, Any]:
    """KEY=VALUE, the value read as JSON where it is JSON (hidden=[300,100], width=0.25), else text."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in value.items()) or "none"
    if isinstance(value, (tuple, list)):
        return " ".join(map(str, value)) or "none"
    return str(value)


def help_text(option: Option, base: Mapping[str, Any]) -> str:
    """The field's help and the default a run gets (from ``base``, the command's own, or the field's)."""
    meta = option.meta
    text = meta["help"]
    if option.kind is bool:
        pass  # a switch: off unless given
    elif meta.get("required"):
        text += " (required" + (", or --sparsity" if meta.get("sparsity") else "") + ")"
    elif option.dest in base:
        text += f" (default: {_show(base[option.dest])})"
    elif "shown_default" in meta:
        text += f" (default: {meta['shown_default']})"
    elif option.default is not None:
        text += f" (default: {_show(option.default)})"
    return text.replace("%", "%%")


class _DeprecatedAlias(argparse.Action):
    """Stores like the option's own flag; an old spelling (``deprecated`` in the option's metadata)
    still works and says once, on stderr, which flag replaces it."""

    def __init__(self, option_strings: list[str], dest: str, deprecated: tuple[str, ...] = (), **kwargs: Any):
        self.deprecated = tuple(deprecated)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if option_string in self.deprecated:
            import sys

            print(f"ticketlab: {option_string} is deprecated; use {self.option_strings[0]} (the same value)",
                  file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_options(parser: argparse.ArgumentParser, opts: list[Option], base: Mapping[str, Any],
                groups: dict[str, Any]) -> None:
    """One argparse option per ``Option``, in sections by ``group`` (created in ``groups`` as needed)."""
    for o in opts:
        if o.group not in groups:
            groups[o.group] = parser.add_argument_group(o.group)
        g, meta = groups[o.group], o.meta
        kwargs: dict[str, Any] = dict(dest=o.dest, default=None, help=help_text(o, base))
        if "metavar" in meta:
            kwargs["metavar"] = meta["metavar"]
        if o.kind is bool:
            kwargs.update(action="store_const", const=not o.default)
        elif _is_dict(o.kind):
            kwargs.update(type=_kv, action="append", metavar="KEY=VALUE")
        else:
            element = o.kind
            if typing.get_origin(o.kind) is tuple:
                element = typing.get_args(o.kind)[0]
                if meta.get("action") == "append":
                    kwargs["action"] = "append"
                else:
                    kwargs["nargs"] = meta.get("nargs", "+")
            if o.choices:
                element = type(o.choices[0])
                kwargs["choices"] = o.choices
            kwargs["type"] = element if element in (int, float) else str
        if meta.get("sparsity"):  # --density D or --sparsity S = 1 - D
            pair = g.add_mutually_exclusive_group(required=bool(meta.get("required")))
            pair.add_argument(o.flag, **kwargs)
            pair.add_argument("--sparsity", type=float, default=None,
                              help=f"fraction removed (1 - density); instead of {o.flag}")
        else:
            kwargs["required"] = bool(meta.get("required"))
            old_flags = tuple(meta.get("deprecated", ()))
            if old_flags:  # earlier spellings keep working, with a deprecation message
                kwargs.update(action=_DeprecatedAlias, deprecated=old_flags)
            g.add_argument(o.flag, *old_flags, **kwargs)


def values(opts: list[Option], args: argparse.Namespace, layers: Mapping[str, Any]) -> dict[str, Any]:
    """``{dest: value}`` for every option the command line or ``layers`` (base and preset) set."""
    out: dict[str, Any] = {}
    for o in opts:
        given = getattr(args, o.dest, None)
        if o.meta.get("sparsity"):
            sparsity = getattr(args, "sparsity", None)
            if sparsity is not None:
                if not 0 <= sparsity < 1:
                    raise ConfigError(f"sparsity (fraction removed) must be in [0, 1), got {sparsity}")
                given = 1.0 - sparsity
            if given is not None:
                given = round(given, 12)  # 1 - 0.98 is 0.020000000000000018
        if _is_dict(o.kind):
            out[o.dest] = dict(layers.get(o.dest, {}), **dict(given or []))
        elif given is not None:
            out[o.dest] = given
        elif o.dest in layers:
            out[o.dest] = layers[o.dest]
        if typing.get_origin(o.kind) is tuple and o.dest in out:
            out[o.dest] = tuple(out[o.dest])
    return out


def build(config_cls: type, opts: list[Option], vals: Mapping[str, Any]) -> Any:
    """The config (nested configs built first) with ``vals`` over the fields' defaults."""
    def make(cls: type, prefix: tuple[str, ...]) -> Any:
        kwargs: dict[str, Any] = {}
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = _without_none(hints[f.name])
            if dataclasses.is_dataclass(kind) and f.metadata.get("cli", True):
                kwargs[f.name] = make(kind, (*prefix, f.name))
        for o in opts:
            if o.path[:-1] == prefix and o.dest in vals:
                kwargs[o.path[-1]] = vals[o.dest]
        for f in dataclasses.fields(cls):
            if "options" in f.metadata:
                kwargs[f.name] = _method_options(cls, f, kwargs, [o for o in opts if o.path[:-1] == (*prefix, f.name)
                                                                  and o.dest in vals], vals)
        return cls(**kwargs)

    return make(config_cls, ())


def _method_options(cls: type, f: dataclasses.Field, kwargs: Mapping[str, Any], given: list[Option],
                    vals: Mapping[str, Any]) -> Any:
    """The method's options from the flags given; a flag of another method's options is a ConfigError."""
    method_field = f.metadata["options_of"]
    method = kwargs.get(method_field, next(g.default for g in dataclasses.fields(cls) if g.name == method_field))
    own = f.metadata["options"]().get(method)
    for o in given:
        if o.options_cls is not own:
            raise ConfigError(f"{o.flag} applies to {'/'.join(o.methods)}, not {method}")
    if not given:
        return None  # the method's defaults
    return own(**{o.path[-1]: vals[o.dest] for o in given})


__all__ = ["Option", "add_options", "build", "help_text", "options", "values"]
