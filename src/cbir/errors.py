"""The one exception type that the command line turns into a single clear line."""


class CbirError(Exception):
    """A problem the user can fix: the message says what, where and what to do.

    The command-line shell prints ``error: <message>`` and exits with status 2,
    never a traceback.
    """
