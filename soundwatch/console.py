"""Where human-facing progress and errors go: stderr, so stdout stays clean for JSON."""

from rich.console import Console

err_console = Console(stderr=True, soft_wrap=True)
