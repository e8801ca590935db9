"""The one exception type for user-facing problems (bad config, bad file, missing weights)."""


class FroqError(Exception):
    """A problem the user can fix; its message is one line: which file, what is wrong, what to do.

    Stage entry points catch it and print the message without a traceback (see ``froq.core.cli``).
    """
