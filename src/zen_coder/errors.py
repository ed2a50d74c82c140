"""The one exception type users see: its message names the input and the fix."""


class ZenCoderError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""
