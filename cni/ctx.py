"""contextlib.suppress for the plugin exec path, without contextlib (it imports
functools, collections and types: milliseconds on every exec)."""

TYPE_CHECKING = False  # mypy treats this name as True: typing stays off the exec path
if TYPE_CHECKING:
    from types import TracebackType


class suppress:  # contextlib's name: each call site reads the same
    """`with suppress(OSError): ...` swallows the exceptions named, as contextlib.suppress."""

    __slots__ = ("kinds",)

    def __init__(self, *kinds: type[BaseException]) -> None:
        self.kinds = kinds

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: "TracebackType | None") -> bool:
        return kind is not None and issubclass(kind, self.kinds)
