"""The one exception type for user-facing problems (bad config, bad file, missing weights)."""


class FroqError(Exception):
    """A problem the user can fix; its message is one line: which file, what is wrong, what to do.

    Stage entry points catch it and print the message without a traceback (see ``froq.core.cli``).
    """


def first_line(exc: BaseException, limit: int | None = 200) -> str:
    """An exception → the first line of its message (its type name when it has none), cut at
    ``limit`` characters (None: not cut); for quoting another library's error in one line."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
