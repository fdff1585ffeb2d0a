"""Exceptions of the reference overlay (one-line messages)."""


class OverlayRefError(Exception):
    """A mount/umount of the reference overlay failed. ``exit_code`` is the CLI exit code."""

    exit_code = 3
    bad_input = False

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class BadInput(OverlayRefError):
    """The caller gave something unusable (missing dir, unknown option...)."""

    exit_code = 2
    bad_input = True
