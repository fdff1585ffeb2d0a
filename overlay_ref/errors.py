"""Exceptions and warnings of the reference overlay (one-line messages)."""

import sys


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


def ready_error_line(e: OverlayRefError) -> bytes:
    """The daemon's ``ERR code message`` line on its ready pipe for E."""
    return f"ERR {e.exit_code} {e}\n".encode()


def from_ready_error_line(line: str) -> OverlayRefError:
    """The exception an ``ERR code message`` line stands for (BadInput for code 2)."""
    _, code, msg = (line.split(" ", 2) + ["", ""])[:3]
    return (BadInput if code == "2" else OverlayRefError)(msg)


def _warn(msg: str) -> None:
    print(f"overlay_ref: warning: {' '.join(msg.split())}", file=sys.stderr)
