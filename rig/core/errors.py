"""Domain exceptions. Each carries the documented exit code of `kproto` (docs/design.md §4)."""
from __future__ import annotations

EXIT_CLEAN = 0
EXIT_REGRESSED = 1
EXIT_BAD_INPUT = 2
EXIT_INFRA = 3


class KprotoError(Exception):
    """Base of every error kproto reports to the user as one line (plus optional detail)."""

    exit_code = EXIT_INFRA

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class BadInput(KprotoError):
    """The user's input is wrong: missing/empty/malformed patch, bad option, bad config fragment."""

    exit_code = EXIT_BAD_INPUT


class PatchError(BadInput):
    """A patch does not apply (names the patch and the failing hunk)."""


class ConfigError(BadInput):
    """Requested kernel config options did not survive olddefconfig."""


class InfraError(KprotoError):
    """The rig could not do its job: build error, boot failure, missing tool, hang of the rig."""

    exit_code = EXIT_INFRA


class MissingTool(InfraError):
    """A host program the rig needs is not installed."""


class BuildError(InfraError):
    """The kernel did not build."""


class BootError(InfraError):
    """The guest never reached init or SSH."""


class GuestError(InfraError):
    """The guest misbehaved mid-run (SSH dropped, harness died)."""
