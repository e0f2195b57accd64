"""The codec reads request bodies exactly as sent, or refuses them."""

from __future__ import annotations

import pytest

from engine.jsonutil import JsonValueError, dumps, loads_strict


@pytest.mark.parametrize(
    "number",
    [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 2**70 + 1, 10**400, -(10**30)],
)
def test_integers_of_any_size_are_read_exactly(number: int) -> None:
    value = loads_strict(f'{{"n": {number}, "list": [1, {number}]}}')
    assert value == {"n": number, "list": [1, number]}
    assert type(value["n"]) is int
    assert dumps(value) == f'{{"n":{number},"list":[1,{number}]}}'


@pytest.mark.parametrize("text", ["1.5e300", "-2.5e19", "9.3e18", "0.1"])
def test_floats_stay_floats(text: str) -> None:
    value = loads_strict(f"[{text}]")
    assert value == [float(text)]
    assert type(value[0]) is float


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[1e400]", "out of the range of a double"),
        ('{"a": [-1e400]}', "out of the range of a double"),
        ('["\\ud800"]', "lone surrogate"),
        ('{"\\udc00": 1}', "lone surrogate"),
        ("[" * 101 + "]" * 101, "nested deeper than 100 levels"),
    ],
)
def test_values_the_store_cannot_keep_are_refused(text: str, problem: str) -> None:
    with pytest.raises(JsonValueError, match=problem):
        loads_strict(text)


@pytest.mark.parametrize("text", ["[NaN]", "[Infinity]", '{"a": -Infinity}'])
def test_constants_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not valid JSON"):
        loads_strict(text)
