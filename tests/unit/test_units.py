import pytest

from nixcell.errors import UsageError
from nixcell.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("256M", 256 << 20),
        ("1G", 1 << 30),
        ("1GiB", 1 << 30),
        ("512k", 512 << 10),
        ("4096", 4096),
        ("1.5G", int(1.5 * (1 << 30))),
        (1000, 1000),
    ],
)
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "12X", "-1M", "0", "M"])
def test_parse_size_rejects(text):
    with pytest.raises(UsageError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "value"), [("30s", 30.0), ("2m", 120.0), ("1h", 3600.0), ("500ms", 0.5), ("1.5", 1.5)]
)
def test_parse_duration(text, value):
    assert parse_duration(text) == value


@pytest.mark.parametrize("text", ["", "soon", "0s", "-3s", "3d"])
def test_parse_duration_rejects(text):
    with pytest.raises(UsageError):
        parse_duration(text)


def test_formatting_round_trips():
    assert format_size(256 << 20) == "256M"
    assert format_size(1 << 30) == "1G"
    assert format_size(1000) == "1000"
    assert format_duration(30) == "30s"
    assert format_duration(120) == "2m"
    assert format_duration(1.5) == "1.5s"
