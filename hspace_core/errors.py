"""The one exception type a user of hspace can cause."""


class HSpaceError(ValueError):
    """Bad input: the message says what was expected and what came."""
