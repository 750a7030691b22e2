"""The errors naturelens raises.

Every error a user can cause or fix is a :class:`NaturelensError`: a message that says what
went wrong and a hint that says what to do. Library code raises them; the command line turns
them into one line and an exit code. Errors of one photo (:class:`PhotoError`) are usually
recorded beside the photo rather than raised to the user.
"""

from __future__ import annotations


class NaturelensError(Exception):
    """A problem the user can fix.

    Parameters
    ----------
    message
        What went wrong, in the user's words.
    hint
        What to do about it (a command to run, a flag to pass); may be empty.
    """

    exit_code = 2

    def __init__(self, message: str = "", hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message and the hint on one line, as the command line prints it."""
        text = " ".join(str(self.message or self.__class__.__name__).split())
        if self.hint and self.hint not in text:
            text += f" ({' '.join(self.hint.split())})"
        return text


class PhotoError(NaturelensError):
    """One photo could not be used. ``reason`` is short and groupable ("not an image"),
    ``detail`` says more (the file, the HTTP status)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class RunStopped(NaturelensError):
    """A run stopped part way (a server became unreachable...). What it finished is kept and
    the same command resumes it."""

    exit_code = 3
