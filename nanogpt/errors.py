"""Errors meant for the user: the command line prints them as one line, no traceback."""


class UserError(Exception):
    """A mistake in the user's input or environment, with a message that says what to do."""
