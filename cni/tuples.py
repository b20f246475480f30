"""typing.NamedTuple's class syntax without importing typing.

A plugin exec pays for every module it imports, and `typing` (with the `re` and
`enum` it pulls) is among the dearest. The modules on that path write

    if TYPE_CHECKING:
        from typing import NamedTuple
    else:
        from cni.tuples import NamedTuple

so the type checker sees typing's NamedTuple and the running plugin this one: a
tuple subclass with the same fields, field defaults, `_fields`,
`_field_defaults`, `_make`, `_replace`, `_asdict`, repr, pickling, and the class
body's methods, properties and docstring. Unlike collections.namedtuple it
compiles no code per class (namedtuple evals a `__new__` for each): a plugin exec
defines a dozen or more record classes, and their construction runs a generic
`__new__`, as fast for positional arguments.
"""

from __future__ import annotations

import _operator

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

_OWN = frozenset(("__module__", "__qualname__", "__annotations__", "__annotate__", "__orig_bases__",
                  "__static_attributes__", "__firstlineno__", "__classcell__", "__doc__"))


class _Record(tuple):  # type: ignore[type-arg]
    """What every record class shares."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()
    _field_defaults: dict[str, Any] = {}

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if not kwargs and len(args) == len(cls._fields):
            return tuple.__new__(cls, args)
        return tuple.__new__(cls, _bind(cls, args, kwargs))

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> Any:
        made = tuple.__new__(cls, iterable)
        if len(made) != len(cls._fields):
            raise TypeError(f"Expected {len(cls._fields)} arguments, got {len(made)}")
        return made

    def _replace(self, **changes: Any) -> Any:
        made = self._make(map(changes.pop, self._fields, self))
        if changes:
            raise ValueError(f"Got unexpected field names: {list(changes)!r}")
        return made

    def _asdict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self, strict=True))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{f}={v!r}' for f, v in zip(self._fields, self, strict=True))})"

    def __getnewargs__(self) -> tuple[Any, ...]:
        return tuple(self)


def _bind(cls: type[_Record], args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    """The field values of a call with keywords, defaults or a wrong count (Python's own errors)."""
    fields, name = cls._fields, cls.__name__
    if len(args) > len(fields):
        raise TypeError(f"{name}.__new__() takes {len(fields) + 1} positional arguments but {len(args) + 1} were given")
    for key in kwargs:
        if key in fields[:len(args)]:
            raise TypeError(f"{name}.__new__() got multiple values for argument {key!r}")
        if key not in fields:
            raise TypeError(f"{name}.__new__() got an unexpected keyword argument {key!r}")
    values = list(args)
    missing = []
    for field in fields[len(args):]:
        if field in kwargs:
            values.append(kwargs[field])
        elif field in cls._field_defaults:
            values.append(cls._field_defaults[field])
        else:
            missing.append(field)
    if missing:
        raise TypeError(f"{name}.__new__() missing {len(missing)} required argument(s): "
                        + ", ".join(repr(m) for m in missing))
    return values


class _NamedTupleMeta(type):
    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> type:
        if namespace.get("_root"):
            return super().__new__(mcs, name, bases, namespace)
        fields = tuple(namespace.get("__annotations__", {}))
        defaults = [f for f in fields if f in namespace]
        if defaults and defaults != list(fields[len(fields) - len(defaults):]):
            raise TypeError(f"{name}: a field without a default follows one with a default")
        body: dict[str, Any] = {
            "__slots__": (), "_fields": fields, "_field_defaults": {f: namespace[f] for f in defaults},
            "__match_args__": fields, "__module__": namespace.get("__module__"),
            "__doc__": namespace.get("__doc__") or f"{name}({', '.join(fields)})",
        }
        for index, field in enumerate(fields):
            body[field] = property(_operator.itemgetter(index), doc=f"Alias for field number {index}")
        for key, value in namespace.items():
            if key not in _OWN and key not in fields:
                body[key] = value
        cls = type(name, (_Record,), body)
        cls.__qualname__ = str(namespace.get("__qualname__", name))
        return cls


class NamedTuple(metaclass=_NamedTupleMeta):
    _root = True
