"""Errors that reach the user as one clear line instead of a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user asked for (bad option, missing image, no root...).

    The CLI and the pytest plugin print ``str(err)`` on one line and exit non-zero.
    """


class LabError(Exception):
    """Something in the lab itself failed (a guest did not boot, a command failed)."""


class CapacityWarning(UserWarning):
    """The lab runs, but differently from what was asked, because this host cannot hold it
    as asked (said once, with what it does instead and how to insist)."""
