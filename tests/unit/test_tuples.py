"""cni.tuples.NamedTuple behaves as typing.NamedTuple does for what berth's records use."""

from __future__ import annotations

import pickle
import typing

import pytest

from cni.tuples import NamedTuple


class Rec(NamedTuple):
    """A record."""

    a: int
    b: str = "x"
    c: tuple[int, ...] = ()

    @property
    def doubled(self) -> int:
        return self.a * 2

    def describe(self) -> str:
        return f"{self.a}/{self.b}"

    KIND = "rec"


class Ref(typing.NamedTuple):
    a: int
    b: str = "x"
    c: tuple[int, ...] = ()


CALLS: list[tuple[tuple[object, ...], dict[str, object]]] = [
    ((1,), {}), ((1, "y"), {}), ((1, "y", (2,)), {}), ((), {"a": 1}), ((1,), {"c": (3,)}),
    ((), {"c": (3,), "a": 4, "b": "z"}),
]
BAD_CALLS: list[tuple[tuple[object, ...], dict[str, object]]] = [
    ((), {}), ((1, "y", (2,), 4), {}), ((1,), {"a": 2}), ((1,), {"d": 2}), ((), {"b": "y"}),
]


@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_construction_matches_typing(args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    ours, ref = Rec(*args, **kwargs), Ref(*args, **kwargs)  # type: ignore[arg-type]
    assert tuple(ours) == tuple(ref) and ours == ref and hash(ours) == hash(ref)
    assert ours._asdict() == ref._asdict()
    assert repr(ours) == repr(ref).replace("Ref(", "Rec(")
    assert (ours.a, ours.b, ours.c) == (ref.a, ref.b, ref.c)


@pytest.mark.parametrize(("args", "kwargs"), BAD_CALLS)
def test_bad_calls_fail_as_typing_does(args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        Ref(*args, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Rec(*args, **kwargs)  # type: ignore[arg-type]


def test_class_attributes_methods_and_helpers() -> None:
    r = Rec(3)
    assert Rec._fields == Ref._fields == ("a", "b", "c")
    assert Rec._field_defaults == Ref._field_defaults == {"b": "x", "c": ()}
    assert Rec.__match_args__ == ("a", "b", "c") and Rec.__doc__ == "A record." and Rec.KIND == "rec"
    assert r.doubled == 6 and r.describe() == "3/x" and isinstance(r, tuple)
    assert r._replace(b="q") == Rec(3, "q") and r == Rec(3)  # a new record; the old one unchanged
    with pytest.raises(ValueError):
        r._replace(d=1)
    assert Rec._make([5, "m", ()]) == Rec(5, "m")
    with pytest.raises(TypeError):
        Rec._make([5])
    with pytest.raises(AttributeError):
        r.a = 4  # type: ignore[misc]
    with pytest.raises(AttributeError):
        r.other = 1  # type: ignore[attr-defined]
    assert pickle.loads(pickle.dumps(r)) == r and type(pickle.loads(pickle.dumps(r))) is Rec
    match r:
        case Rec(a, b):
            assert (a, b) == (3, "x")
        case _:
            pytest.fail("no match")


def test_a_field_without_default_after_one_with_is_refused() -> None:
    with pytest.raises(TypeError):
        class Bad(NamedTuple):
            a: int = 1
            b: int
