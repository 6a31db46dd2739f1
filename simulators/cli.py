"""What both simulators' command lines share: parse the arguments, set up the project's logging, run."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any


def run_cli(
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, None]],
    argv: Sequence[str] | None = None,
) -> int:
    """`run(args)` until it returns (the simulators run until SIGINT/SIGTERM); the parser needs --log-level."""
    args = parser.parse_args(argv)
    from gateway.logs import configure_logging  # the project's log set-up, for the command lines only

    configure_logging(args.log_level)
    asyncio.run(run(args))
    return 0


def positive_float(text: str) -> float:
    """An argparse type: a number more than 0 (rates, speeds, intervals)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value
