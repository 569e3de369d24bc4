"""The one exception type that means "the user asked for something we cannot do".

The CLI prints these as a single line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class C2CError(Exception):
    """A user-facing error: bad input, a missing model, a fuser for another pair, and so on."""
