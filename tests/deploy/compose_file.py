"""Read a compose file the way `docker compose` does before it validates: YAML (anchors and ``<<``
merge keys), then ``${VAR}`` interpolation of every string value from an env file.

Interpolation follows the Compose specification: ``$VAR``, ``${VAR}``, ``${VAR:-default}``,
``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``, ``${VAR:+alt}``, ``${VAR+alt}`` and ``$$``
for a literal ``$``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

_VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?$", re.S)


class InterpolationError(Exception):
    """A required variable is missing (``${VAR:?message}``) or a ``${...}`` is malformed."""


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def interpolate(text: str, env: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        if m["named"]:
            return env.get(m["named"], "")
        b = _BRACED.match(m["braced"])
        if not b:
            raise InterpolationError(f"bad substitution ${{{m['braced']}}}")
        name, op, arg = b["name"], b["op"], b["arg"] or ""
        value = env.get(name)
        unset_or_empty = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return interpolate(arg, env) if unset_or_empty else value  # type: ignore[return-value]
        if op in (":?", "?"):
            if unset_or_empty:
                raise InterpolationError(f"{name}: {arg or 'required variable is not set'}")
            return value  # type: ignore[return-value]
        if op in (":+", "+"):
            return "" if unset_or_empty else interpolate(arg, env)
        return value or ""

    return _VAR.sub(one, text)


def _walk(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: _walk(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [_walk(item, env) for item in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def load(path: Path, env: dict[str, str]) -> dict[str, Any]:
    """The compose model after YAML merge keys and interpolation with ``env``."""
    return _walk(yaml.safe_load(Path(path).read_text()), env)


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping (compose allows a mapping or a list of KEY=VALUE)."""
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}
