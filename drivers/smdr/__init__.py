"""SMDR/CDR record formats: one module per PBX family, chosen by a link's `format`."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from datetime import tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from drivers.smdr.base import RecordParser, SmdrParseError
from gateway.config import LinkConfig

# format name (config) → module exposing PARSER, a RecordParser subclass
PARSER_MODULES = {
    "avaya-ipo": "drivers.smdr.avaya_ipo",
    "panasonic": "drivers.smdr.panasonic",
    "nec-sv": "drivers.smdr.nec_sv",
    "mitel-mivb": "drivers.smdr.mitel_mivb",
    "3cx": "drivers.smdr.threecx",
    "custom": "drivers.smdr.custom",
}
LOCALTIME_FILE = Path("/etc/localtime")


def parser_class(format_name: str) -> type[RecordParser]:
    return importlib.import_module(PARSER_MODULES[format_name]).PARSER


def machine_timezone() -> tzinfo:
    """The machine's zone with its DST rules (a fixed offset would be wrong half the year)."""
    try:
        with LOCALTIME_FILE.open("rb") as file:
            return ZoneInfo.from_file(file, key="localtime")
    except OSError:
        return ZoneInfo("UTC")


def link_timezone(link: LinkConfig) -> tzinfo:
    """The zone of the PBX clock behind a link: its `timezone`, or the machine's."""
    return ZoneInfo(link.timezone) if link.timezone else machine_timezone()


def create_parser(link: LinkConfig) -> RecordParser:
    return parser_class(link.format)(link.name, tz=link_timezone(link), options=link.options)


class SmdrFormats:
    """The format registry as configuration validation sees it (gateway.config.LinkFormats): the names a link's
    `format` may take, each format's checks of its `options`, and how its parser will read lines."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(PARSER_MODULES)

    def validate_options(self, format_name: str, options: Mapping[str, Any]) -> None:
        parser_class(format_name).validate_options(options)

    def describe(self, link: LinkConfig) -> str:
        return create_parser(link).variant()


SMDR_FORMATS = SmdrFormats()


__all__ = [
    "PARSER_MODULES",
    "SMDR_FORMATS",
    "RecordParser",
    "SmdrFormats",
    "SmdrParseError",
    "create_parser",
    "link_timezone",
    "machine_timezone",
    "parser_class",
]
