"""The one exception type users see: a clear, one-line message about their input."""


class DefpertError(Exception):
    """A problem with the user's input or environment, reported as one line (exit status 2)."""
