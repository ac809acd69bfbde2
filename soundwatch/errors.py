"""One place for user-facing errors and the CLI exit codes they map to."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # unexpected failure (a bug): rerun with --debug and report it
    USAGE = 2  # bad flag or argument
    CONFIG = 3  # bad settings file or environment variable
    SERVICE_UNAVAILABLE = 4  # Kafka, Redis or InfluxDB cannot be reached
    MISSING_DEPENDENCY = 5  # a system package or optional extra is missing
    BAD_INPUT = 6  # input data (audio, folders, artifacts) is unusable
    INTERRUPTED = 130


class SoundwatchError(Exception):
    """An error a user can act on: ``message`` says what went wrong, ``hint`` what to do."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(SoundwatchError):
    exit_code = ExitCode.CONFIG


class ServiceUnavailable(SoundwatchError):
    exit_code = ExitCode.SERVICE_UNAVAILABLE


class MissingDependency(SoundwatchError):
    exit_code = ExitCode.MISSING_DEPENDENCY


class BadInput(SoundwatchError):
    exit_code = ExitCode.BAD_INPUT
