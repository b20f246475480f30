"""typing.NamedTuple's class syntax without importing typing.

A plugin exec pays for every module it imports, and `typing` (with the `re` and
`enum` it pulls) is among the dearest. The modules on that path write

    if TYPE_CHECKING:
        from typing import NamedTuple
    else:
        from cni.tuples import NamedTuple

so the type checker sees typing's NamedTuple and the running plugin this one: the
same collections.namedtuple, field defaults, methods, properties and docstring.
"""

from __future__ import annotations

import collections

_OWN = frozenset(("__module__", "__qualname__", "__annotations__", "__annotate__", "__orig_bases__",
                  "__static_attributes__", "__firstlineno__", "__classcell__"))


class _NamedTupleMeta(type):
    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, object]) -> type:
        if namespace.get("_root"):
            return super().__new__(mcs, name, bases, namespace)
        fields = list(namespace.get("__annotations__", {}))  # type: ignore[call-overload]
        defaults = [namespace[f] for f in fields if f in namespace]
        if defaults and any(f not in namespace for f in fields[len(fields) - len(defaults):]):
            raise TypeError(f"{name}: a field without a default follows one with a default")
        cls: type = collections.namedtuple(name, fields, defaults=defaults,  # type: ignore[misc]
                                           module=str(namespace.get("__module__")))
        for key, value in namespace.items():
            if key not in _OWN and key not in fields:
                setattr(cls, key, value)
        cls.__qualname__ = str(namespace.get("__qualname__", name))
        return cls


class NamedTuple(metaclass=_NamedTupleMeta):
    _root = True
