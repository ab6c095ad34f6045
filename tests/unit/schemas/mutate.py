"""Structural mutations of example events, and fastjsonschema's verdict on them, shared by the hypothesis tests of
the registry and the compiler."""
from __future__ import annotations

import copy
from typing import Any


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into ``value`` (dict keys and list indexes), the empty path first."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, prefix + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths(child, prefix + (index,))
    return found


def mutate(event: Any, mutations: list[tuple[str, int, Any, str]]) -> Any:
    """A copy of ``event`` with each ``(action, pick, value, key)`` applied at the ``pick``-th non-empty path:
    ``replace`` the value there, ``delete`` it, or ``add`` ``value`` under ``key`` (dict) or at the end (list)."""
    event = copy.deepcopy(event)
    for action, pick, value, key in mutations:
        candidates = [p for p in paths(event) if p]
        if not candidates:
            break
        *parents, last = candidates[pick % len(candidates)]
        target = event
        for part in parents:
            target = target[part]
        if action == "replace":
            target[last] = value
        elif action == "delete":
            del target[last]
        elif isinstance(target[last], dict):
            target[last][key] = value
        elif isinstance(target[last], list):
            target[last].append(value)
    return event


def fastjsonschema_accepts(registry: Any, event: Any) -> bool:
    """Whether fastjsonschema, the registry's reference validator, accepts ``event``: the envelope, then the payload
    schema of its name (anything that raises on the way, such as a missing or unknown name, is a no)."""
    try:
        registry._envelope.fast(event)
        registry._events[event["event"]].fast(event["properties"])
    except Exception:
        return False
    return True
