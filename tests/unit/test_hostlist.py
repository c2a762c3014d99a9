import pytest
from hypothesis import given, strategies as st

from shifter_core import hostlist


@pytest.mark.parametrize("text,expected", [
    ("n1", ["n1"]),
    ("n[1-3]", ["n1", "n2", "n3"]),
    ("n[1-2,5],login01", ["n1", "n2", "n5", "login01"]),
    ("gpu[08-10]", ["gpu08", "gpu09", "gpu10"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ("", []),
])
def test_expand(text, expected):
    assert hostlist.expand(text) == expected


@pytest.mark.parametrize("text", ["n[1-", "n1]", "n[a-b]", "n[3-1]", "n[1-2"])
def test_malformed_lists_are_refused(text):
    with pytest.raises(hostlist.HostlistError):
        hostlist.expand(text)


@given(st.lists(st.integers(min_value=0, max_value=999), min_size=1, max_size=30, unique=True))
def test_ranges_round_trip(numbers):
    text = "n[" + ",".join(str(n) for n in numbers) + "]"
    assert hostlist.expand(text) == [f"n{n}" for n in numbers]
