"""The one exception exports raise for problems a user can fix (the CLI prints it without a traceback)."""

from __future__ import annotations


class ExportError(ValueError):
    """An export that cannot be made as asked: wrong format for this avatar, bad frame range, bad motion file."""
