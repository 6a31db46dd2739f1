"""Command line (`gateway`, `python -m gateway`): run, check, demo, tap, hash-password (docs/configuration.md),
migrate-store (docs/migrate-store.md)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import getpass
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from drivers.smdr import SMDR_FORMATS
from gateway.config import NODE_NAME, NODE_NAME_RULE, GatewayConfig, default_node_name
from gateway.config.check import check_config
from gateway.config.describe import describe_config
from gateway.config.load import load_config
from gateway.config.locate import BUNDLED_CONFIG_PATH, CONFIG_ENV_VAR, LOOKUP_RULE, SEARCHED_PLACES, find_config
from gateway.errors import ConfigError
from gateway.lifecycle import stop_on_signals
from gateway.logs import configure_logging
from gateway.passwords import hash_password
from gateway.systemd import SystemdNotifier
from simulators.cli import positive_float

if TYPE_CHECKING:
    from gateway.probe import ProbeResult

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

log = structlog.get_logger(__name__)


def _port_hint(error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return " — is another gateway (or `gateway demo`) running? Stop it, or change the port in the configuration"
    return ""


def api_key_secrets(config: GatewayConfig) -> list[str]:
    """The configured API keys, for the log redactor to remove wherever they appear."""
    return [key.key for key in config.api.keys]


def _load_config(given: Path | None, *, bundled_fallback: bool = False) -> GatewayConfig | None:
    """The configuration found by the lookup rule (gateway.config.locate), or None after printing why it was
    refused (FILE:LINE: KEY: message)."""
    try:
        path = find_config(given, environ=os.environ, bundled_fallback=bundled_fallback)
        return load_config(path, SMDR_FORMATS)
    except ConfigError as error:
        print(f"gateway: configuration error: {error}", file=sys.stderr)
        return None


async def _run_until_signalled(config: GatewayConfig) -> int:
    # Late: `check` and `hash-password` need none of it.
    from gateway.service import Gateway, freeze_startup_objects, tune_interpreter

    configure_logging(config.log.level, config.log.format, secrets=api_key_secrets(config))
    gateway = Gateway(config)
    systemd = SystemdNotifier()  # does nothing unless started by systemd with Type=notify
    tune_interpreter()
    async with stop_on_signals() as stopping:
        await gateway.start()
        freeze_startup_objects()
        try:
            systemd.ready(f"serving {gateway.url}")
            systemd.start_watchdog()
            await stopping.wait()
            log.info("shutting down")
        finally:
            await systemd.stopping()
            await gateway.stop()
            await systemd.close()
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    config = _load_config(args.config)
    if config is None:
        return EXIT_CONFIG
    try:
        return asyncio.run(_run_until_signalled(config))
    except ConfigError as error:  # found only on start-up (e.g. a TLS certificate that cannot be loaded)
        print(f"gateway: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as error:  # e.g. the HTTP port is taken
        print(f"gateway: cannot start: {error}{_port_hint(error)}", file=sys.stderr)
        return EXIT_FAILURE


def cmd_demo(args: argparse.Namespace) -> int:
    from simulators.demo import DemoError, run_demo  # imported late: only the demo needs the simulators

    config = _load_config(args.config, bundled_fallback=True)  # the demo alone may use the file shipped with the code
    if config is None:
        return EXIT_CONFIG
    configure_logging(args.log_level, config.log.format, secrets=api_key_secrets(config))
    try:
        asyncio.run(
            run_demo(
                config,
                sys.stdout,
                seed=args.seed,
                calls_per_minute=args.calls_per_minute,
                speed=args.speed,
                keep_store=args.keep_store,
            )
        )
    except DemoError as error:
        print(f"gateway: cannot demonstrate this configuration: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as error:  # e.g. the HTTP port or a simulator's port is taken
        print(f"gateway: cannot start the demo: {error}{_port_hint(error)}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    config = _load_config(args.config)
    if config is None:
        return EXIT_CONFIG
    print(describe_config(config, SMDR_FORMATS))
    findings = check_config(config)
    for finding in findings:
        print(finding, file=sys.stderr)
    problems = [finding for finding in findings if not finding.warning]
    results: list[ProbeResult] = []
    if args.probe:
        from gateway.probe import probe_config  # late: only --probe opens sockets and serial ports

        print("probing each link and recorder (nothing is sent):")
        results = asyncio.run(probe_config(config))
        for result in results:
            print(f"  {result}")
    if problems:
        return EXIT_CONFIG
    warned = len(findings)
    print(f"configuration OK{f' ({warned} warnings)' if warned else ''}")
    unreachable = sum(not result.reachable for result in results)
    if unreachable:
        print(f"{unreachable} of {len(results)} targets not reachable", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_tap(args: argparse.Namespace) -> int:
    from gateway.tap import run_tap  # imported late: only the tap needs the drivers loaded

    config = _load_config(args.config)
    if config is None:
        return EXIT_CONFIG
    configure_logging("warning", "console")  # the tap's own lines are the output; the link's warnings still show
    try:
        return asyncio.run(run_tap(config, args.link, sys.stdout))
    except KeyError as error:
        print(f"gateway: {error.args[0]}", file=sys.stderr)
        return EXIT_FAILURE


EXIT_INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C


def _ask_password_twice() -> str | None:
    """The password typed twice on the terminal; None (after saying why) when the two differ."""
    password = getpass.getpass("Password: ")
    if not password:
        return ""
    if getpass.getpass("Repeat password: ") != password:
        print("gateway: the two passwords differ; nothing was hashed", file=sys.stderr)
        return None
    return password


def cmd_hash_password(args: argparse.Namespace) -> int:
    try:
        if sys.stdin.isatty():
            password = _ask_password_twice()
            if password is None:
                return EXIT_FAILURE
        else:
            password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            print("gateway: an empty password cannot be hashed", file=sys.stderr)
            return EXIT_FAILURE
        print(hash_password(password))
    except EOFError:  # Ctrl-D at the prompt
        print("\ngateway: no password given; nothing was hashed", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:  # Ctrl-C at the prompt or while hashing
        print("\ngateway: interrupted; nothing was hashed", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


def cmd_migrate_store(args: argparse.Namespace) -> int:
    from gateway.cluster.migrate import MigrationError, migrate_store, summary  # late: only this command needs it
    from gateway.config.load import check_postgresql_url

    node = args.node
    if node is None:
        if args.config is not None:
            config = _load_config(args.config)
            if config is None:
                return EXIT_CONFIG
            node = config.node
        else:
            node = default_node_name()
    if not NODE_NAME.fullmatch(node):
        print(f"gateway: --node must be a node name of {NODE_NAME_RULE}, not {node!r}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        check_postgresql_url(args.to)
    except ValueError as error:
        print(f"gateway: --to {error}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging("warning", "console")  # the progress lines are the output
    try:
        result = asyncio.run(migrate_store(args.source, args.to, node, sys.stdout))
    except MigrationError as error:
        print(f"gateway: migrate-store: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("\ngateway: migrate-store interrupted; what was copied stays (running it again is safe)", file=sys.stderr)
        return EXIT_INTERRUPTED
    first, *not_copied = summary(result, args.source, node)
    print(first)
    for line in not_copied:
        print(f"gateway: {line}", file=sys.stderr)
    if not_copied:
        return EXIT_FAILURE
    print(
        f"next: in node {node}'s configuration set store.url to this database and store.spool: {args.source}"
        " (docs/migrate-store.md)"
    )
    return EXIT_OK


CONFIG_HELP = f"configuration file; without it: ${CONFIG_ENV_VAR}, else {SEARCHED_PLACES}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Recorder-side telephony gateway",
        epilog=f"Every command reads the configuration from {LOOKUP_RULE}; `gateway demo` alone then falls back to "
        "the default shipped with the code.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the gateway until SIGINT/SIGTERM")
    run.add_argument("--config", type=Path, default=None, metavar="FILE", help=CONFIG_HELP)
    run.set_defaults(handler=cmd_run)

    check = commands.add_parser("check", help="validate a configuration file and its serial ports")
    check.add_argument("--config", type=Path, default=None, metavar="FILE", help=CONFIG_HELP)
    check.add_argument(
        "--probe",
        action="store_true",
        help="also try each link's and recorder's address or serial port and say what answered (exit 1 if any did not)",
    )
    check.set_defaults(handler=cmd_check)

    demo = commands.add_parser("demo", help="run the gateway with the PBX and trunk recorder simulators making calls")
    demo.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"{CONFIG_HELP}, else the default shipped with the code ({BUNDLED_CONFIG_PATH})",
    )
    demo.add_argument("--seed", type=int, default=None, help="seed of the traffic, to replay a run")
    demo.add_argument(
        "--calls-per-minute", type=positive_float, default=12.0, help="random calls per minute per PBX (%(default)s)"
    )
    demo.add_argument(
        "--speed",
        type=positive_float,
        default=1.0,
        help="site time per real second: 10 makes calls ten times shorter (%(default)s)",
    )
    demo.add_argument(
        "--keep-store",
        action="store_true",
        help="keep the demo's own store (the configured one with -demo in its name) from the last run",
    )
    demo.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="warning",
        help="log level of the demo (%(default)s: the banner and the event lines stay readable); the file's level "
        "is not used",
    )
    demo.set_defaults(handler=cmd_demo)

    tap = commands.add_parser("tap", help="show a link's raw lines and their parsed records live (stores nothing)")
    tap.add_argument("--config", type=Path, default=None, metavar="FILE", help=CONFIG_HELP)
    tap.add_argument("--link", required=True, help="the link's name in the configuration")
    tap.set_defaults(handler=cmd_tap)

    migrate = commands.add_parser(
        "migrate-store", help="copy a SQLite store's calls and tokens into a cluster's PostgreSQL database"
    )
    migrate.add_argument(
        "--from", dest="source", type=Path, required=True, metavar="FILE", help="the SQLite store file (only read)"
    )
    migrate.add_argument(
        "--to",
        required=True,
        metavar="URL",
        help="postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE; without a password, PGPASSWORD or ~/.pgpass",
    )
    migrate.add_argument(
        "--node",
        default=None,
        metavar="NAME",
        help="the node whose calls they become; default: `node` of --config's file, else this machine's host name",
    )
    migrate.add_argument(
        "--config", type=Path, default=None, metavar="FILE", help="take --node's default from this configuration"
    )
    migrate.set_defaults(handler=cmd_migrate_store)

    hash_cmd = commands.add_parser("hash-password", help="read a password on stdin, print a password_hash")
    hash_cmd.set_defaults(handler=cmd_hash_password)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
