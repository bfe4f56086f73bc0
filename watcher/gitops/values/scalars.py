"""Scalars as Helm reads them: YAML 1.1 resolution, Python values, and safe rendering.

Pure. Helm reads values with go-yaml v2, a YAML 1.1 reader: an unquoted ``off``
or ``n`` is a boolean there, ``1.10`` a float, ``010`` octal. The table below is
YAML 1.1's (as ruamel.yaml's ``VersionedResolver`` for 1.1 has it, which the
tests keep as the reference); the fast composer resolves with it.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from ruamel.yaml.nodes import ScalarNode as RuamelScalar
from ruamel.yaml.resolver import VersionedResolver

STR = "tag:yaml.org,2002:str"
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"
BOOL = "tag:yaml.org,2002:bool"
NULL = "tag:yaml.org,2002:null"
MERGE = "tag:yaml.org,2002:merge"
TIMESTAMP = "tag:yaml.org,2002:timestamp"
VALUE = "tag:yaml.org,2002:value"

# (tag, pattern, first characters): YAML 1.1's implicit types.
YAML11: tuple[tuple[str, str, str], ...] = (
    (BOOL, r"y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE"
           r"|on|On|ON|off|Off|OFF", "yYnNtTfFoO"),
    (FLOAT, r"[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
            r"|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
            r"|\.[0-9_]+(?:[eE][-+][0-9]+)?"
            r"|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*"
            r"|[-+]?\.(?:inf|Inf|INF)"
            r"|\.(?:nan|NaN|NAN)", "-+0123456789."),
    (INT, r"[-+]?0b[0-1_]+"
          r"|[-+]?0?[0-7_]+"
          r"|[-+]?(?:0|[1-9][0-9_]*)"
          r"|[-+]?0x[0-9a-fA-F_]+"
          r"|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+", "-+0123456789"),
    (MERGE, r"<<", "<"),
    (NULL, r"~|null|Null|NULL|", "~nN"),
    (TIMESTAMP, r"[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]"
                r"|[0-9][0-9][0-9][0-9] -[0-9][0-9]? -[0-9][0-9]?"
                r"(?:[Tt]|[ \t]+)[0-9][0-9]?"
                r":[0-9][0-9] :[0-9][0-9] (?:\.[0-9]*)?"
                r"(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?", "0123456789"),
    (VALUE, r"=", "="),
)  # fmt: skip


class Yaml11Resolver(yaml.resolver.BaseResolver):
    """PyYAML's resolver with YAML 1.1's table, for the libyaml composer."""


for _tag, _pattern, _first in YAML11:
    _regexp = re.compile(f"^(?:{_pattern})$", re.X if " " in _pattern else 0)
    Yaml11Resolver.add_implicit_resolver(_tag, _regexp, list(_first))
# The empty plain scalar (``key:``) is null.
Yaml11Resolver.add_implicit_resolver(NULL, re.compile(r"^$"), [""])

# Plain scalars that some YAML reader (1.1, 1.2 or go-yaml) takes for a non-string.
_RISKY_WORDS = frozenset(
    {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "inf", "infinity", "nan"}
)
_NUMBERISH = re.compile(
    r"[-+]?(?:0[xXoObB][0-9a-fA-F_]+|[0-9_]+(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?)"
    r"|[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}.*"
)
_RESOLVERS = (VersionedResolver(version=(1, 1)), VersionedResolver(version=(1, 2)))
_TRUE_WORDS = frozenset({"y", "yes", "true", "on"})


def to_int(text: str) -> int:
    s = text.replace("_", "")
    sign = -1 if s.startswith("-") else 1
    s = s.lstrip("+-")
    if ":" in s:  # YAML 1.1 sexagesimal
        value = 0
        for part in s.split(":"):
            value = value * 60 + int(part)
        return sign * value
    if s[:2] in ("0x", "0X"):
        return sign * int(s[2:], 16)
    if s[:2] in ("0b", "0B"):
        return sign * int(s[2:], 2)
    if s[:2] in ("0o", "0O"):
        return sign * int(s[2:], 8)
    if len(s) > 1 and s.startswith("0"):  # YAML 1.1 octal
        return sign * int(s, 8)
    return sign * int(s)


def to_float(text: str) -> float:
    s = text.replace("_", "").lower()
    if s.endswith(".inf"):
        return float("-inf") if s.startswith("-") else float("inf")
    if s == ".nan":
        return float("nan")
    if ":" in s:
        sign = -1.0 if s.startswith("-") else 1.0
        value = 0.0
        for part in s.lstrip("+-").split(":"):
            value = value * 60 + float(part)
        return sign * value
    return float(s)


def to_python(tag: str, text: str) -> Any:
    """A scalar as plain Python data; odd tags fall back to the text as written."""
    try:
        if tag == NULL:
            return None
        if tag == BOOL:
            return text.lower() in _TRUE_WORDS
        if tag == INT:
            return to_int(text)
        if tag == FLOAT:
            return to_float(text)
    except ValueError:
        return text
    return text


def plain_is_safe(value: str, flow: bool = False, reference: bool = False) -> bool:
    """Whether ``value`` written unquoted reads back as that exact string in any reader
    (``reference``: an image reference, whose ``/`` and ``@`` are plain too)."""
    if not value or value.lower() in _RISKY_WORDS or _NUMBERISH.fullmatch(value):
        return False
    if flow and ":" in value:  # old libyaml ports reject `a:b` inside `{...}`
        return False
    for resolver in _RESOLVERS:
        tag = resolver.resolve(RuamelScalar, value, (True, False))
        if str(getattr(tag, "value", tag)) != STR:
            return False
    allowed = r"[A-Za-z0-9_][A-Za-z0-9._:/@-]*" if reference else r"[A-Za-z0-9_][A-Za-z0-9._:-]*"
    return bool(re.fullmatch(allowed, value))


def render(value: str | None, style: str | None, flow: bool, reference: bool = False) -> str:
    """``value`` as it goes into the file: in the quotes it replaces, else plain if safe;
    None (a field emptied) as an empty quoted string."""
    # Values come from the OCI grammar (letters, digits, `._-:`), so no escaping is needed.
    if not value:
        return "''" if style == "'" else '""'
    if style == "'":
        return f"'{value}'"
    if style == '"' or not plain_is_safe(value, flow, reference):
        return f'"{value}"'
    return value
