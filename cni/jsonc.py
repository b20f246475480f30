"""JSON for the plugin exec path: the stdlib's own C scanner and encoder, without
the `json` package.

Importing `json` compiles the regular expressions of `json.decoder` and
`json.encoder`, which imports `re` and, through it, `enum`: most of what a cold
plugin process spends on imports. The C accelerator `_json` that `json` itself
uses does all the work of a plugin's loads and dumps, so these functions call it
directly and give byte-for-byte the stdlib's answers (the indented form, which the
C encoder lacks, is laid out here around its leaves). Whatever the fast form does
not cover (BOMs and UTF-16/32 input, keys that are not strings, and every error,
so that its message and position are the stdlib's) is handed to `json`.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO, Any

_WHITESPACE = " \t\n\r"


class _Decoding:
    """The attributes `_json.make_scanner` reads from a json.JSONDecoder."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__


_scan = _json.make_scanner(_Decoding())  # type: ignore[arg-type]  # reads only these attributes


def loads(s: str | bytes | bytearray) -> Any:
    """json.loads(s)."""
    if isinstance(s, (bytes, bytearray)):
        if len(s) < 2 or s[0] == 0 or s[1] == 0 or s[:3] == b"\xef\xbb\xbf" or s[:2] in (b"\xff\xfe", b"\xfe\xff"):
            return _stdlib().loads(s)  # not plain UTF-8: the stdlib detects the encoding
        s = bytes(s).decode("utf-8", "surrogatepass")
    elif not isinstance(s, str):
        return _stdlib().loads(s)  # its TypeError
    start = len(s) - len(s.lstrip(_WHITESPACE))
    try:
        obj, end = _scan(s, start)
    except (StopIteration, ValueError, RecursionError, SystemError):
        # SystemError: the scanner raises json.decoder.JSONDecodeError only when
        # that module is loaded already; the stdlib loads it and says what is wrong
        return _stdlib().loads(s)
    if s[end:].strip(_WHITESPACE):
        return _stdlib().loads(s)  # "Extra data"
    return obj


def loads_pairs(s: str, object_pairs_hook: Callable[[list[tuple[str, Any]]], Any]) -> Any:
    """json.loads(s, object_pairs_hook=object_pairs_hook)."""
    decoding = _Decoding()
    decoding.object_pairs_hook = object_pairs_hook  # type: ignore[assignment]
    start = len(s) - len(s.lstrip(_WHITESPACE))
    try:
        obj, end = _json.make_scanner(decoding)(s, start)  # type: ignore[arg-type]
    except (StopIteration, ValueError, RecursionError, SystemError):
        end = -1
    if end < 0 or s[end:].strip(_WHITESPACE):
        return _stdlib().loads(s, object_pairs_hook=object_pairs_hook)  # its error
    return obj


def load(fp: IO[Any]) -> Any:
    """json.load(fp)."""
    return loads(fp.read())


def _not_serializable(o: Any) -> Any:
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


def dumps(obj: Any, *, sort_keys: bool = False, separators: tuple[str, str] | None = None,
          indent: int | None = None, ensure_ascii: bool = True, allow_nan: bool = True) -> str:
    """json.dumps(obj, ...) for the keywords berth uses."""
    item_separator, key_separator = separators or ((",", ": ") if indent is not None else (", ", ": "))
    quote = _json.encode_basestring_ascii if ensure_ascii else _json.encode_basestring
    encode = _json.make_encoder({}, _not_serializable, quote, None, key_separator, item_separator,
                                sort_keys, False, allow_nan)
    if indent is None:
        return "".join(encode(obj, 0))
    try:  # the journals' form: the C encoder has no indentation, so the containers are laid out here
        out: list[str] = []
        _indented(obj, encode, " " * indent if isinstance(indent, int) else str(indent), 0, sort_keys,
                  item_separator, key_separator, out)
        return "".join(out)
    except (TypeError, ValueError, RecursionError):  # non-str keys, circles, what is not JSON: the stdlib's answer
        return str(_stdlib().dumps(obj, sort_keys=sort_keys, separators=separators, indent=indent,
                                   ensure_ascii=ensure_ascii, allow_nan=allow_nan))


def _indented(obj: Any, encode: Any, step: str, level: int, sort_keys: bool, item_separator: str,
              key_separator: str, out: list[str]) -> None:
    """json.dumps(obj, indent=...)'s text, appended to out; leaves are the C encoder's."""
    if isinstance(obj, dict):
        if not obj:
            out.append("{}")
            return
        items = list(obj.items())
        if any(type(k) is not str for k, _v in items):
            raise TypeError("a key that is not a str")  # the stdlib converts or refuses it
        if sort_keys:
            items.sort()
        inner = "\n" + step * (level + 1)
        out.append("{" + inner)
        for n, (key, value) in enumerate(items):
            if n:
                out.append(item_separator + inner)
            out.append("".join(encode(key, 0)) + key_separator)
            _indented(value, encode, step, level + 1, sort_keys, item_separator, key_separator, out)
        out.append("\n" + step * level + "}")
    elif isinstance(obj, (list, tuple)):
        if not obj:
            out.append("[]")
            return
        inner = "\n" + step * (level + 1)
        out.append("[" + inner)
        for n, value in enumerate(obj):
            if n:
                out.append(item_separator + inner)
            _indented(value, encode, step, level + 1, sort_keys, item_separator, key_separator, out)
        out.append("\n" + step * level + "]")
    else:
        out.append("".join(encode(obj, 0)))


def _stdlib() -> Any:
    import json

    return json
