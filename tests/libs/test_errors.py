import grpc
import pytest

from flotilla.libs import errors


@pytest.mark.parametrize("cls", list(errors.BY_CODE.values()))
def test_every_error_maps_to_its_grpc_code_and_survives_the_wire(cls: type[errors.FlotillaError]) -> None:
    assert grpc.StatusCode[{"Canceled": "CANCELLED"}.get(cls.__name__, "")
                           or _snake(cls.__name__)].value[0] == cls.code
    back = errors.FlotillaError.from_wire(cls("boom").to_wire())
    assert type(back) is cls and back.message == "boom"


def _snake(name: str) -> str:
    out = "".join("_" + c if c.isupper() else c for c in name).lstrip("_").upper()
    return out


def test_errorf_follows_containerd_message_shape() -> None:
    assert errors.errorf(errors.NotFound, 'namespace "x"').message == 'namespace "x": not found'


def test_unknown_code_becomes_unknown() -> None:
    assert isinstance(errors.FlotillaError.from_wire({"code": 99, "message": "?"}), errors.Unknown)
