from __future__ import annotations

import argparse

import pytest

from bench.harness import suite_cmd
from bench.harness.cases import Case, matrix, parse_size, select_cases


def test_sizes_are_1024_based_like_spegels() -> None:
    assert parse_size("10MB") == 10 * 2**20
    assert parse_size("1gb") == 2**30
    assert parse_size("512KB") == 512 * 1024
    for bad in ("10", "10 MB", "1.5GB", "MB"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_case_names_and_tags_follow_spegels_images() -> None:
    case = Case.parse("100mb-4")
    assert (case.size, case.layers, case.name) == (100 * 2**20, 4, "100MB-4")
    assert case.tag("v2") == "v2-100MB-4"
    with pytest.raises(ValueError):
        Case.parse("100MB")
    with pytest.raises(ValueError):
        Case.of("10MB", 0)


def test_every_image_has_its_own_seed() -> None:
    seeds = {
        c.seed(v, salt)
        for c in matrix(["10MB", "1GB"], [1, 4])
        for v in ("v1", "v2")
        for salt in (0, 1)
    }
    assert len(seeds) == 16
    assert Case.parse("10MB-1").seed("v1") == Case.parse("10MB-1").seed("v1")


def test_default_cases_and_added_sizes() -> None:
    assert [c.name for c in select_cases()] == ["10MB-1", "10MB-4", "100MB-1", "100MB-4"]
    names = [c.name for c in select_cases(["1GB"])]
    assert names == ["10MB-1", "10MB-4", "100MB-1", "100MB-4", "1GB-1", "1GB-4"]
    assert [c.name for c in select_cases(["100MB"])] == [c.name for c in select_cases()]
    assert [c.name for c in select_cases(["1GB"], only=["1gb-4", "10MB-1"])] == ["10MB-1", "1GB-4"]


def test_the_suite_measures_the_whole_matrix() -> None:
    parser = argparse.ArgumentParser()
    suite_cmd.add_arguments(parser)
    args = suite_cmd.whole_matrix(parser.parse_args([]))
    names = [case.name for case in select_cases(args.sizes, args.layers, args.cases)]
    assert names == ["10MB-1", "10MB-4", "100MB-1", "100MB-4", "1GB-1", "1GB-4"]
    assert args.name == "cluster-pulls-suite"
    with pytest.raises(SystemExit):
        suite_cmd.whole_matrix(parser.parse_args(["--cases", "10MB-1"]))
