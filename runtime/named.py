"""Building runtime objects by name (metrics, callbacks, schedules, augmentations), with the same
"did you mean" errors everywhere for unknown names and unknown arguments."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from nnd.compiler.diagnostics import NndError, did_you_mean


def normalize(name: str) -> str:
    return str(name).strip().lower().replace("-", "_")


def lookup(table: Mapping[str, Callable[..., Any]], name: str, what: str,
           aliases: Mapping[str, str] | None = None) -> tuple[str, Callable[..., Any]]:
    """The (canonical name, factory) for `name`, or NndError naming the closest known one."""
    aliases = aliases or {}
    key = aliases.get(normalize(name), normalize(name))
    if key not in table:
        hint = did_you_mean(key, list(table) + list(aliases))
        hint = aliases.get(hint, hint) if hint else None
        raise NndError(f"unknown {what} '{name}'" + (f"; did you mean '{hint}'?" if hint else "")
                       + f" (available: {', '.join(table)})")
    return key, table[key]


def check_arguments(factory: Callable[..., Any], args: Mapping[str, Any], what: str, key: str) -> None:
    """Unknown keyword arguments and missing required ones, named against the factory's signature."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    parameters = {name: p for name, p in inspect.signature(target).parameters.items()
                  if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    valid = list(parameters)
    for name in args:
        if name not in parameters:
            hint = did_you_mean(name, valid)
            raise NndError(f"unknown argument '{name}' for {what} '{key}'"
                           + (f"; did you mean '{hint}'?" if hint else "")
                           + (f" (valid: {', '.join(valid)})" if valid else " (it takes no arguments)"))
    missing = [name for name, p in parameters.items() if p.default is inspect.Parameter.empty and name not in args]
    if missing:
        raise NndError(f"{what} '{key}' needs argument{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
                       f" (valid: {', '.join(valid)})")


def build(table: Mapping[str, Callable[..., Any]], name: str, args: Mapping[str, Any], what: str,
          aliases: Mapping[str, str] | None = None) -> Any:
    key, factory = lookup(table, name, what, aliases)
    check_arguments(factory, args, what, key)
    return factory(**args)
