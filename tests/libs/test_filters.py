import pytest

from flotilla.libs import filters
from flotilla.libs.errors import InvalidArgument

RECORD = filters.lookup_fields({"name": "busybox", "topic": "/namespaces/create"},
                               {"a": "1", "dotted.key": "x"})


@pytest.mark.parametrize("expr,expected", [
    ("name==busybox", True),
    ("name!=busybox", False),
    ("name~=^busy", True),
    ('topic=="/namespaces/create"', True),
    ("topic~=^/namespaces/", True),
    ("topic~=/^.namespaces/", True),
    ("labels.a", True),
    ("labels.b", False),
    ('labels."dotted.key"==x', True),
    ("labels.a==1,name==busybox", True),
    ("labels.|dotted.key|==x", True),
    ("labels.a==1,name==other", False),
    ("name==other", False),
])
def test_selector(expr: str, expected: bool) -> None:
    assert filters.parse([expr]).matches(RECORD) is expected


def test_several_filters_are_or() -> None:
    assert filters.parse(["name==other", "labels.a==1"]).matches(RECORD)
    assert not filters.parse(["name==other", "labels.a==2"]).matches(RECORD)


def test_no_filter_matches_everything() -> None:
    assert filters.parse([]).matches(RECORD)


def test_bad_regex_never_matches_as_in_containerd() -> None:
    assert not filters.parse(["name~=("]).matches(RECORD)


def test_not_equal_matches_an_absent_field_as_in_containerd() -> None:
    assert filters.parse(["labels.b!=x"]).matches(RECORD)
    assert filters.parse(["labels.b~=^$"]).matches(RECORD)


@pytest.mark.parametrize("bad", ["name==", "name==a b", "==x", 'name=="open', "a,,b", "topic~=/namespaces/*"])
def test_bad_filters_are_invalid_argument(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        filters.parse([bad])


def test_parse_error_shows_position_as_containerd() -> None:
    import pytest as _pytest
    from flotilla.libs import filters as _filters
    from flotilla.libs.errors import InvalidArgument as _IA
    with _pytest.raises(_IA) as end:
        _filters.parse(["labels.x=="])
    assert end.value.message == "filters: parse error: [labels.x==]: expected value or quoted: invalid argument"
    with _pytest.raises(_IA) as mid:
        _filters.parse(["a==b c"])
    assert ">|c|<" in mid.value.message or ">| |<" in mid.value.message



def test_parse_error_texts_for_missing_operator_and_trailing_input() -> None:
    from flotilla.libs.errors import InvalidArgument as _IA
    with pytest.raises(_IA, match=r'^filters: parse error: \[ref >\|-\|< w\]: expected an operator'):
        filters.parse(["ref-w"])
    with pytest.raises(_IA, match=r"unexpected input: "):
        filters.parse(['a=="b"c'])
