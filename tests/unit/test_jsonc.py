"""cni.jsonc answers exactly as the stdlib's json does: the same objects, the same
text, the same exception type and message for every input."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cni import jsonc

pytestmark = pytest.mark.unit

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text())
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=20)


def outcome(fn: Any, *args: Any, **kwargs: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args, **kwargs)
    except Exception as exc:
        return type(exc).__name__, str(exc)


def same(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    """Equal outcomes; NaN equal to NaN (json's own output compared as text)."""
    return a[0] == b[0] and json.dumps(a[1], sort_keys=True, default=repr) == json.dumps(b[1], sort_keys=True,
                                                                                          default=repr)


@settings(max_examples=400)
@given(value=values, sort_keys=st.booleans(), compact=st.booleans(), ensure_ascii=st.booleans(),
       allow_nan=st.booleans())
def test_dumps_is_the_stdlibs(value: Any, sort_keys: bool, compact: bool, ensure_ascii: bool,
                              allow_nan: bool) -> None:
    kw: dict[str, Any] = {"sort_keys": sort_keys, "ensure_ascii": ensure_ascii, "allow_nan": allow_nan}
    if compact:
        kw["separators"] = (",", ":")
    assert outcome(jsonc.dumps, value, **kw) == outcome(json.dumps, value, **kw)


@settings(max_examples=400)
@given(value=values, indent=st.sampled_from([None, 1, 2]), space=st.sampled_from(["", " ", "\n\t\r "]))
def test_loads_of_valid_text_is_the_stdlibs(value: Any, indent: int | None, space: str) -> None:
    text = space + json.dumps(value, indent=indent) + space
    assert same(outcome(jsonc.loads, text), outcome(json.loads, text))
    data = text.encode("utf-8", "surrogatepass")
    assert same(outcome(jsonc.loads, data), outcome(json.loads, data))


HOSTILE = ["", " ", "{", "}", "[1,]", '{"a":1,}', '{"a" 1}', "01", "1 2", "nul", "NaN", "-Infinity", "[NaN]",
           '"\\ud800"', '"\x00"', '"a\nb"', "\ufeff{}", "[" * 100000 + "]" * 100000, "1" * 5000, "1e999",
           '{"a":1}x', '{"a":1} ', "\u00a0{}", "tru", "[1e5, -0.0, 1E-3]", '"\\u00e9\\uD83D\\uDE00"']
HOSTILE_BYTES = [b"", b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00", b"{\x00}\x00", b"\x00{\x00}", b"\xff",
                 b"{\"a\":\"\xc3\"}", b'"\xed\xa0\x80"', b"1", b"\x80\x81", b"[1]\x00"]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_loads_of_hostile_text_is_the_stdlibs(text: str) -> None:
    assert same(outcome(jsonc.loads, text), outcome(json.loads, text))


@pytest.mark.parametrize("data", HOSTILE_BYTES, ids=range(len(HOSTILE_BYTES)))
def test_loads_of_hostile_bytes_is_the_stdlibs(data: bytes) -> None:
    assert same(outcome(jsonc.loads, data), outcome(json.loads, data))


def test_loads_keeps_the_stdlibs_special_floats_and_types() -> None:
    got = jsonc.loads('[NaN, Infinity, -Infinity, 1.5, 2, "x", null, true]')
    assert math.isnan(got[0]) and got[1:3] == [math.inf, -math.inf]
    assert [type(v) for v in got[3:]] == [float, int, str, type(None), bool]
    assert outcome(jsonc.loads, 5) == outcome(json.loads, 5)


def test_dumps_refuses_what_the_stdlib_refuses() -> None:
    for bad in ({(1, 2): 3}, {"a": object()}, float("nan")):
        assert outcome(jsonc.dumps, bad, allow_nan=False) == outcome(json.dumps, bad, allow_nan=False)
    circular: list[Any] = []
    circular.append(circular)
    assert outcome(jsonc.dumps, circular) == outcome(json.dumps, circular)


def test_indent_is_the_stdlibs() -> None:
    value = {"b": [1, {"c": None}], "a": "é"}
    assert jsonc.dumps(value, indent=1, sort_keys=True) == json.dumps(value, indent=1, sort_keys=True)


_FRESH = """
import sys
from cni import jsonc
for text in sys.argv[1:]:
    try:
        jsonc.loads(text)
    except ValueError as exc:
        print(type(exc).__name__, exc)
"""


def test_errors_are_the_stdlibs_before_json_is_imported() -> None:
    """In a plugin process json is not loaded when the first bad config arrives."""
    import subprocess
    import sys

    bad = ['{"a": 1,}', "[1, 2", '"\\x"', "{} x"]
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run([sys.executable, "-c", _FRESH, *bad], capture_output=True, text=True, timeout=60,
                          check=False, cwd=root)
    expected = [f"JSONDecodeError {outcome(json.loads, b)[1]}" for b in bad]
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == expected
