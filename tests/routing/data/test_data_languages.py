"""FLORES code listing and validation, short-code mapping."""
import pytest

from routing.data.languages import (
    FLORES_200_LANGUAGES,
    PAPER_LANGUAGES,
    flores_code,
    flores_languages,
    validate_flores_languages,
)


def test_builtin_code_set():
    assert len(FLORES_200_LANGUAGES) == 204 == len(set(FLORES_200_LANGUAGES))
    assert set(PAPER_LANGUAGES) <= set(FLORES_200_LANGUAGES)
    assert flores_languages() == FLORES_200_LANGUAGES


def test_folder_listing_matches_builtin_set(shared_data):
    assert flores_languages(shared_data / "flores200") == tuple(sorted(FLORES_200_LANGUAGES))


def test_missing_folder_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="devtest"):
        flores_languages(tmp_path / "nowhere")


def test_validation_keeps_order_and_drops_repeats():
    assert validate_flores_languages(["arb_Latn", "arb_Arab", "arb_Latn"]) == ("arb_Latn", "arb_Arab")


@pytest.mark.parametrize("code, suggestion",
                         [("arb", "arb_Latn"), ("eng_latn", "eng_Latn"), ("tha_Thia", "tha_Thai")])
def test_unknown_code_lists_close_matches(code, suggestion):
    with pytest.raises(ValueError, match=suggestion):
        validate_flores_languages(["eng_Latn", code])


def test_validation_against_a_smaller_set():
    with pytest.raises(ValueError, match="fra_Latn"):
        validate_flores_languages(["fra_Latn"], available=["eng_Latn"])
    with pytest.raises(ValueError, match="no languages"):
        validate_flores_languages([])


def test_short_codes():
    assert flores_code("zh-s") == "zho_Hans" and flores_code("ar") == "arb_Arab"
    with pytest.raises(ValueError, match="xx"):
        flores_code("xx")
