"""`gateway hash-password` at a terminal: asked twice, and Ctrl-D / Ctrl-C end it without a traceback."""

from __future__ import annotations

import io

import pytest

from gateway import cli
from gateway.passwords import verify_password


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def typing(monkeypatch, *answers: str | type[BaseException]):
    """getpass answers in order; an exception class is raised instead (EOFError = Ctrl-D, KeyboardInterrupt = Ctrl-C)."""
    pending = list(answers)
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        answer = pending.pop(0)
        if isinstance(answer, type):
            raise answer()
        return answer

    monkeypatch.setattr(cli.sys, "stdin", Terminal())
    monkeypatch.setattr(cli.getpass, "getpass", fake_getpass)
    return prompts


def test_the_password_is_asked_twice_and_hashed_when_both_agree(monkeypatch, capsys):
    prompts = typing(monkeypatch, "hunter2", "hunter2")
    assert cli.main(["hash-password"]) == cli.EXIT_OK
    assert prompts == ["Password: ", "Repeat password: "]
    assert verify_password("hunter2", capsys.readouterr().out.strip())


def test_two_different_passwords_hash_nothing(monkeypatch, capsys):
    typing(monkeypatch, "hunter2", "hunter3")
    assert cli.main(["hash-password"]) == cli.EXIT_FAILURE
    captured = capsys.readouterr()
    assert captured.out == "" and "differ" in captured.err


@pytest.mark.parametrize(
    ("answers", "code", "says"),
    [
        ((EOFError,), cli.EXIT_FAILURE, "no password given"),
        (("hunter2", EOFError), cli.EXIT_FAILURE, "no password given"),
        ((KeyboardInterrupt,), cli.EXIT_INTERRUPTED, "interrupted"),
        (("hunter2", KeyboardInterrupt), cli.EXIT_INTERRUPTED, "interrupted"),
    ],
)
def test_ctrl_d_and_ctrl_c_end_quietly(monkeypatch, capsys, answers, code, says):
    typing(monkeypatch, *answers)
    assert cli.main(["hash-password"]) == code
    captured = capsys.readouterr()
    assert captured.out == "" and says in captured.err and "Traceback" not in captured.err
