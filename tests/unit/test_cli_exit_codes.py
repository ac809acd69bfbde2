"""The console script's exit codes: usage errors are 2 with "Try '... --help'", and `--debug` adds a
traceback without ever changing the code (README: 0 ok, 1 bug, 2 usage, 3 settings, ... 6 input)."""

from __future__ import annotations

from pathlib import Path

import pytest


def _is_usage_error(result, command: str) -> bool:  # noqa: ANN001
    return (
        result.code == 2
        and f"Try '{command} --help' for help." in result.stderr
        and "unexpected error" not in result.stderr
        and "Traceback" not in result.stderr
    )


@pytest.mark.parametrize("debug", [[], ["--debug"]])
def test_unknown_command_and_missing_argument_are_usage_errors(run_soundwatch, debug: list[str]) -> None:
    result = run_soundwatch(*debug, "nosuch")
    assert _is_usage_error(result, "soundwatch"), result
    assert "No such command 'nosuch'" in result.stderr
    result = run_soundwatch(*debug, "models", "show")
    assert _is_usage_error(result, "soundwatch models show"), result
    assert "Missing argument" in result.stderr
    result = run_soundwatch(*debug, "models")  # a group without its command: the help, as a usage error
    assert result.code == 2 and "Commands" in result.stdout + result.stderr, result
    assert "unexpected error" not in result.stderr
    result = run_soundwatch(*debug, "normal", "confirm", "--from", "-2h", "--to", "-1h")
    assert _is_usage_error(result, "soundwatch normal confirm"), result
    assert "Missing option '--machine'" in result.stderr


def test_method_and_device_are_choices_that_list_the_valid_values(run_soundwatch, tmp_path: Path) -> None:
    from training.methods import METHODS

    result = run_soundwatch("train", "--data", str(tmp_path), "--method", "nope")
    assert _is_usage_error(result, "soundwatch train"), result
    assert all(f"'{m}'" in result.stderr for m in (*METHODS, "auto")), result.stderr
    result = run_soundwatch("evaluate", "--data", str(tmp_path), "--method", "auto")  # auto trains; it is no model
    assert _is_usage_error(result, "soundwatch evaluate"), result
    devices = "'auto', 'cpu', 'cuda'"
    for command in (
        ["train", "--data", str(tmp_path)],
        ["evaluate", "--data", str(tmp_path)],
        ["retrain", "--once"],
        ["score", "run"],
        ["bench", "scoring"],
    ):
        result = run_soundwatch(*command, "--device", "tpu")
        assert _is_usage_error(result, "soundwatch " + " ".join(c for c in command if not c.startswith(("-", "/")))), (
            command,
            result,
        )
        assert devices in result.stderr, result.stderr
    help_text = run_soundwatch("train", "--help").stdout
    assert "auto|cpu|cuda" in help_text and "clp|" in help_text


@pytest.mark.parametrize("debug", [False, True])
def test_debug_adds_a_traceback_and_keeps_the_exit_code(
    run_soundwatch, tmp_path: Path, debug: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag = ["--debug"] if debug else []
    monkeypatch.setenv("SOUNDWATCH_REDIS__URL", "redis://127.0.0.1:1/0")  # never the shared Redis
    # an error the user can act on: unusable input -> 6
    result = run_soundwatch(*flag, "models", "show", "../x/fan", "--registry", str(tmp_path))
    assert result.code == 6, result
    assert "error: machine type '../x/fan' is not a machine type name" in result.stderr
    assert ("Traceback" in result.stderr) is debug
    # bad settings -> 3
    monkeypatch.setenv("SOUNDWATCH_SCORING__MAX_BATCH", "0")
    result = run_soundwatch(*flag, "config", "show")
    assert result.code == 3 and "SOUNDWATCH_SCORING__MAX_BATCH" in result.stderr, result
    assert ("Traceback" in result.stderr) is debug
    monkeypatch.delenv("SOUNDWATCH_SCORING__MAX_BATCH")

    # a bug -> 1, with the traceback under --debug
    def broken() -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("deploy.main.get_settings", broken)
    result = run_soundwatch(*flag, "config", "show")
    assert result.code == 1, result
    assert "unexpected error: RuntimeError: a bug" in result.stderr
    assert ("Traceback" in result.stderr) is debug
