"""The flag table and the typed options classes describe the same options."""

from __future__ import annotations

import typing
from dataclasses import fields

import pytest

from mirror import cli, options
from mirror.options import OPTIONS_BY_COMMAND, RegistryOptions

# What a flag's kind parses to, as the field's annotation spells it.
KIND_TYPES = {
    "str": {str},
    "level": {str},
    "int": {int},
    "bool": {bool},
    "duration": {float},
    "list": {tuple[str, ...]},
    "regex-list": {tuple[str, ...]},
    "positional": {tuple[str, ...]},
}


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_flag_is_a_field_and_every_field_a_flag(command: str) -> None:
    flags = {flag.dest for flag in cli.COMMANDS[command][1]} | {cli.LOG_LEVEL.dest}
    names = {field.name for field in fields(OPTIONS_BY_COMMAND[command])}
    assert flags == names


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_field_types_match_flag_kinds(command: str) -> None:
    cls = OPTIONS_BY_COMMAND[command]
    hints = typing.get_type_hints(cls, vars(options))
    for flag in [*cli.COMMANDS[command][1], cli.LOG_LEVEL]:
        hint = hints[flag.dest]
        if typing.get_origin(hint) is typing.Literal:
            hint = type(typing.get_args(hint)[0])
        assert hint in KIND_TYPES[flag.kind], (flag.name, hint)
        default = cli.flag_default(command, flag)
        assert isinstance(default, typing.get_origin(hint) or hint), (flag.name, default)


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_parsed_options_are_the_commands_class(command: str) -> None:
    argv = {
        "configuration": ["configuration", "--mirror-targets", "http://127.0.0.1:5000"],
        "cleanup": ["cleanup", "--addr", ":8080"],
        "cleanup-wait": ["cleanup-wait", "--probe-endpoint", "x:8080"],
        "watch": ["watch", "http://127.0.0.1:9090"],
    }.get(command, [command])
    parsed = cli.parse_args(argv, environ={})
    assert type(parsed) is OPTIONS_BY_COMMAND[command]
    assert parsed.command == command


def test_options_are_frozen_and_lists_are_tuples() -> None:
    parsed = cli.parse_args(
        ["registry", "--mirrored-registries", "https://a", "https://b"], environ={}
    )
    assert isinstance(parsed, RegistryOptions)
    assert parsed.mirrored_registries == ("https://a", "https://b")
    with pytest.raises(AttributeError):
        parsed.registry_addr = ":1"  # type: ignore[misc]


def test_help_shows_defaults_from_the_options_class() -> None:
    text = cli.build_parser()._subparsers._group_actions[0].choices["registry"].format_help()  # type: ignore[union-attr]
    assert "default 20ms" in text  # --mirror-resolve-timeout
    assert "default :5000" in text  # --registry-addr
