"""The layer window: parsing "A:B", the model check, its layers, and the mean of a curve over it."""
import json

import numpy as np
import pytest

from routing.window import Window, layer_list


def test_parse_and_layers():
    window = Window.parse("2:5")
    assert window == Window(2, 5) == (2, 5) and str(window) == "2:5"
    assert list(window.layers) == [2, 3, 4, 5] and list(Window.parse(" 0 : 0 ").layers) == [0]
    first, last = window
    assert (first, last) == (window.first, window.last) == (2, 5)
    assert json.dumps({"window": window}) == '{"window": [2, 5]}'  # written as [first, last], like a tuple


@pytest.mark.parametrize("text, message", [
    ("3", "must be FIRST:LAST"), ("1:2:3", "must be FIRST:LAST"), ("a:b", "must be FIRST:LAST"), ("", "FIRST:LAST"),
    ("1.5:2", "must be FIRST:LAST"), ("3:1", "0 <= FIRST <= LAST"), ("-1:2", "0 <= FIRST <= LAST"),
])
def test_parse_refuses_what_is_not_a_window(text, message):
    with pytest.raises(ValueError, match=message):
        Window.parse(text)


def test_check_against_a_model():
    assert Window(0, 3).check(4) == Window(0, 3)
    for window in (Window(2, 4), Window(3, 2), Window(-1, 1)):
        with pytest.raises(ValueError, match=r"lies outside the model: need 0 <= FIRST <= LAST < 4"):
            window.check(4)
    with pytest.raises(ValueError, match="outside the table"):
        Window(0, 9).check(4, "the table")


def test_mean_over_the_window_keeps_the_curve_precision():
    curve64 = np.array([0.9, 0.1, 0.25, 0.3, 0.8])
    assert Window(1, 3).mean(curve64) == pytest.approx((0.1 + 0.25 + 0.3) / 3, rel=1e-15)
    assert Window(4, 4).mean(list(curve64)) == 0.8
    curve32 = np.random.default_rng(0).random(6).astype(np.float32)
    assert Window(1, 4).mean(curve32) == float(np.mean(curve32[1:5]))  # float32 arithmetic, as the demo writes it
    with pytest.raises(ValueError, match="outside a 5-layer curve"):
        Window(3, 5).mean(curve64)


def test_a_window_is_never_read_as_two_layers():
    assert layer_list(Window(1, 3)) == [1, 2, 3]
    assert layer_list((1, 3)) == [1, 3] and layer_list(range(2)) == [0, 1]
