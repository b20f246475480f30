"""JSON for the plugin exec path: the stdlib's own C scanner and encoder, without
the `json` package.

Importing `json` compiles the regular expressions of `json.decoder` and
`json.encoder`, which imports `re` and, through it, `enum`: most of what a cold
plugin process spends on imports. The C accelerator `_json` that `json` itself
uses does all the work of a plugin's loads and dumps, so these functions call it
directly and give byte-for-byte the stdlib's answers. Whatever the fast form does
not cover (indentation, BOMs and UTF-16/32 input, and every error, so that its
message and position are the stdlib's) is handed to `json`.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
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


def load(fp: IO[Any]) -> Any:
    """json.load(fp)."""
    return loads(fp.read())


def _not_serializable(o: Any) -> Any:
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


def dumps(obj: Any, *, sort_keys: bool = False, separators: tuple[str, str] | None = None,
          indent: int | None = None, ensure_ascii: bool = True, allow_nan: bool = True) -> str:
    """json.dumps(obj, ...) for the keywords berth uses."""
    if indent is not None:
        return str(_stdlib().dumps(obj, sort_keys=sort_keys, separators=separators, indent=indent,
                                   ensure_ascii=ensure_ascii, allow_nan=allow_nan))
    item_separator, key_separator = separators or (", ", ": ")
    quote = _json.encode_basestring_ascii if ensure_ascii else _json.encode_basestring
    encode = _json.make_encoder({}, _not_serializable, quote, None, key_separator, item_separator,
                                sort_keys, False, allow_nan)
    return "".join(encode(obj, 0))


def _stdlib() -> Any:
    import json

    return json
