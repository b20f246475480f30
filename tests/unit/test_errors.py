"""The error value and its wire format."""

from __future__ import annotations

import json

from cni import errors
from cni.errors import CNIError


def test_codes_match_the_spec() -> None:
    spec = {"INCOMPATIBLE_VERSION": 1, "UNSUPPORTED_FIELD": 2, "UNKNOWN_CONTAINER": 3, "INVALID_ENV": 4,
            "IO_FAILURE": 5, "DECODE_FAILURE": 6, "INVALID_NETWORK_CONFIG": 7, "INVALID_NETNS": 8,
            "TRY_AGAIN_LATER": 11, "PLUGIN_NOT_AVAILABLE": 50, "LIMITED_CONNECTIVITY": 51, "INTERNAL": 999}
    for name, code in spec.items():
        assert getattr(errors, name) == code
    ours = [errors.NOT_IMPLEMENTED, errors.ADDRESS_EXHAUSTED, errors.PORT_CONFLICT, errors.LINK_CONFLICT,
            errors.NFTABLES_FAILURE, errors.NETLINK_FAILURE, errors.CHECK_FAILED]
    assert all(100 <= c < 999 for c in ours) and len(set(ours)) == len(ours)


def test_to_json() -> None:
    err = CNIError(7, "bad config", "field x")
    assert err.to_json("0.4.0") == {"cniVersion": "0.4.0", "code": 7, "msg": "bad config", "details": "field x"}
    assert CNIError(11, "busy").to_json("1.1.0") == {"cniVersion": "1.1.0", "code": 11, "msg": "busy"}
    json.dumps(CNIError(5, "ü\0\n", "\udcff").to_json("1.0.0"))  # any text serialises


def test_is_an_exception() -> None:
    err = CNIError(4, "m", "d")
    assert isinstance(err, Exception) and str(err) == "m"
    assert (err.code, err.msg, err.details) == (4, "m", "d")
    assert repr(err) == "CNIError(4, 'm', 'd')"


def test_helpers() -> None:
    assert errors.invalid_config("x", "y").code == errors.INVALID_NETWORK_CONFIG
    assert errors.invalid_env("x").code == errors.INVALID_ENV
    assert errors.invalid_env("x").details == ""
