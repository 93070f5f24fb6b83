"""Tests for distdiff.utils.files: names at the file system's limit, and atomic writes of such names."""

import errno
import os

import pytest

from distdiff.utils.files import (NAME_MAX, atomic_open, atomic_write_text, describe_os_error, fitting_name,
                                  is_environment_error, temp_pattern)

STEM = "s" * 240  # a stem whose synthetic images' names (253 bytes) just fit


def test_names_that_fit_are_kept_and_only_longer_ones_hashed():
    assert fitting_name("img0", ".pt") == "img0.pt"  # short names as before, so old caches and claims still match
    assert fitting_name(STEM, ".pt") == STEM + ".pt"
    long = "s" * 253
    hashed = fitting_name(long, ".pt")
    assert hashed.endswith(".pt") and len(hashed) < NAME_MAX and "s" * 10 not in hashed
    assert fitting_name(long, ".pt") == hashed and fitting_name(long + "t", ".pt") != hashed
    # The limit is in bytes as the file system encodes them, not in characters.
    assert fitting_name("日" * 84, ".pt") == "日" * 84 + ".pt"  # 252 + 3 bytes
    assert fitting_name("日" * 85, ".pt") != "日" * 85 + ".pt"
    assert fitting_name(STEM, extra=15) == STEM and fitting_name(STEM, extra=16) != STEM


def test_an_atomic_write_of_a_name_at_the_limit_uses_a_temp_name_that_fits(tmp_path):
    path = tmp_path / f"{STEM}_expand_0.png"
    with atomic_open(path, "w") as handle:
        handle.write("pixels")
        temps = [p.name for p in tmp_path.iterdir()]
        assert len(temps) == 1 and len(os.fsencode(temps[0])) <= NAME_MAX
        assert list(tmp_path.glob(temp_pattern(path))) == [tmp_path / temps[0]]  # what resume cleans up
    assert path.read_text() == "pixels" and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_short_names_keep_their_readable_temp_names(tmp_path):
    path = tmp_path / "results.yaml"
    with atomic_open(path, "w") as handle:
        handle.write("x")
        temp = next(p.name for p in tmp_path.iterdir())
    assert temp.startswith(".results.yaml.") and temp.endswith(".tmp")


def test_a_failed_write_of_a_long_name_leaves_nothing(tmp_path):
    path = tmp_path / STEM
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as handle:
            handle.write("half")
            raise RuntimeError("killed")
    assert not list(tmp_path.iterdir())


def test_a_name_over_the_limit_is_one_line_about_the_limit(tmp_path):
    with pytest.raises(OSError) as caught:
        atomic_write_text(tmp_path / ("s" * 300), "x")
    assert caught.value.errno == errno.ENAMETOOLONG and is_environment_error(caught.value)
    line = describe_os_error(caught.value)
    assert "\n" not in line and line.endswith(f"longer than the file system allows ({NAME_MAX} bytes per name); "
                                               f"use shorter names.")
    assert not list(tmp_path.iterdir())  # the temp file was removed
