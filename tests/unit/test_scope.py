"""Where a model applies: the patient's age from the header (a pure function that never raises) and
a model card's scope deciding per instance (age, view, modality, body part), with its reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from secondreader.dicom.age import PatientAge, age_from_header, parse_age_string
from secondreader.errors import ModelError
from secondreader.model.card import ModelScope, load_card, parse_scope

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("value", "years", "text"), [
    ("053Y", 53, "053Y"), ("006M", 0, "006M"), ("071M", 5, "071M"), ("010W", 0, "010W"), ("120W", 2, "120W"),
    ("003D", 0, "003D"), ("000Y", 0, "000Y"), (" 004Y ", 4, "004Y"), ("004y", 4, "004Y"),
])
def test_patient_age_strings(value: str, years: int, text: str) -> None:
    assert parse_age_string(value) == PatientAge(years, text)


@pytest.mark.parametrize("value", ["53", "ABCY", "999Q", "53Y", "0053Y", "-01Y", "", None, "CANARY^PHI", 53])
def test_malformed_ages_are_unknown(value: object) -> None:
    assert parse_age_string(value) is None
    assert age_from_header(value) is None


def test_age_from_the_birth_date_and_the_study_date() -> None:
    assert age_from_header(None, "19700615", "20240614") == PatientAge(53, "53 years")
    assert age_from_header(None, "19700615", "20240615") == PatientAge(54, "54 years")
    assert age_from_header("", "20200301", "20210301") == PatientAge(1, "1 year")
    # the Study Date first, else the Series Date, else the Acquisition Date
    assert age_from_header(None, "20200101", None, "20230101", "20250101").years == 3
    assert age_from_header(None, "20200101", "", "", "20220101").years == 2
    # a well-formed Patient's Age wins over the dates; a malformed one gives way to them
    assert age_from_header("004Y", "19700101", "20240101").text == "004Y"
    assert age_from_header("53", "19700101", "20240101").text == "54 years"


@pytest.mark.parametrize(("birth", "dates"), [
    ("20250101", ("20240101",)),          # born after the study
    ("19700101", ()),                     # no study, series or acquisition date
    ("19701301", ("20240101",)),          # not a date
    ("1970-01-01", ("20240101",)),        # not DA
    (None, ("20240101",)),
    ("19700101", ("garbage",)),
])
def test_dates_that_give_no_age(birth: str | None, dates: tuple[str, ...]) -> None:
    assert age_from_header(None, birth, *dates) is None


def test_the_age_text_is_rebuilt_never_copied() -> None:
    """A reason may show the age, so its text comes from the parsed numbers, not the header."""
    assert parse_age_string("004Y").text == "004Y"  # type: ignore[union-attr]
    assert age_from_header(None, "19700101", "20240101").text == "54 years"  # type: ignore[union-attr]


def _scope(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"age_years": [1, 5], "unknown_age": "not_applicable", "views": ["PA", "AP"],
                            "modalities": ["CR", "DX"], "body_parts": ["CHEST"],
                            "population": "paediatric chest radiographs, children aged 1-5 years",
                            "limits": "28 px"}
    spec.update(changes)
    return spec


PAEDIATRIC = parse_scope(_scope())
ADULT = parse_scope(_scope(age_years=[18, None], unknown_age="applies"))


@pytest.mark.parametrize(("scope", "age", "reason"), [
    (PAEDIATRIC, "003Y", None),
    (PAEDIATRIC, "001Y", None),
    (PAEDIATRIC, "005Y", None),
    (PAEDIATRIC, "071M", None),  # 5 years 11 months: five completed years
    (PAEDIATRIC, "006M", "m is validated on children aged 1-5 years; patient age 006M"),
    (PAEDIATRIC, "006Y", "m is validated on children aged 1-5 years; patient age 006Y"),
    (PAEDIATRIC, "053Y", "m is validated on children aged 1-5 years; patient age 053Y"),
    (PAEDIATRIC, None, "m is validated on children aged 1-5 years; patient age unknown"),
    (ADULT, "053Y", None),
    (ADULT, "018Y", None),
    (ADULT, None, None),  # an adult list with an empty Patient's Age is still adult
    (ADULT, "017Y", "m is validated on adults aged 18 years and over; patient age 017Y"),
])
def test_scope_by_age(scope: ModelScope, age: str | None, reason: str | None) -> None:
    assert scope.not_applicable("m", age=parse_age_string(age), view="PA", modality="DX", body_part="CHEST") == reason


def test_scope_by_view_modality_and_body_part() -> None:
    child = parse_age_string("003Y")
    decide = PAEDIATRIC.not_applicable
    assert decide("m", age=child, view="AP", modality="CR", body_part="chest") is None  # case-insensitive
    assert decide("m", age=child, view="LL", modality="DX", body_part="CHEST") == (
        "m is validated on PA and AP views; View Position LL")
    assert decide("m", age=child, view="PA", modality="MG", body_part="CHEST") == (
        "m is validated on CR and DX images; Modality MG")
    assert decide("m", age=child, view="PA", modality="DX", body_part="ABDOMEN") == (
        "m is validated on Body Part Examined CHEST; Body Part Examined ABDOMEN")
    # what the header does not say is accepted: a missing view, modality or body part
    assert decide("m", age=child, view=None, modality=None, body_part=None) is None
    # a picture without a header: only the age decides, as unknown_age says
    assert ADULT.not_applicable("m", age=None) is None
    assert PAEDIATRIC.not_applicable("m", age=None) == "m is validated on children aged 1-5 years; patient age unknown"


def test_open_and_closed_age_words() -> None:
    assert parse_scope(_scope(age_years=[None, None])).not_applicable("m", age=None) is None
    assert parse_scope(_scope(age_years=[None, 12])).ages() == "children aged up to 12 years"
    assert parse_scope(_scope(age_years=[18, 65])).ages() == "adults aged 18-65 years"
    assert parse_scope(_scope(age_years=[5, 30])).ages() == "patients aged 5-30 years"
    assert parse_scope(_scope(age_years=[2, None])).ages() == "patients aged 2 years and over"


@pytest.mark.parametrize(("change", "message"), [
    ({"age_years": [5, 1]}, r"scope\.age_years: min must not be above max"),
    ({"age_years": [1]}, r"scope\.age_years must be \[min, max\]"),
    ({"age_years": ["1", 5]}, r"scope\.age_years: min and max must be whole numbers"),
    ({"age_years": [1.5, 5]}, r"scope\.age_years: min and max must be whole numbers"),
    ({"age_years": [-1, 5]}, r"scope\.age_years: min must be a whole number of years >= 0"),
    ({"unknown_age": "maybe"}, r"scope\.unknown_age must be applies or not_applicable"),
    ({"views": ["PA", "LL"]}, r"scope\.views: LL is not a frontal"),
    ({"views": []}, r"scope\.views must be a non-empty list"),
    ({"modalities": "CR"}, r"scope\.modalities must be a list of names"),
    ({"population": ""}, r"scope\.population must name the data"),
    ({"population": 3}, r"scope\.population must be text"),
    ({"ages": [1, 5]}, r"scope has unknown field\(s\) ages"),
])
def test_a_bad_scope_names_its_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_scope(_scope(**change))
    missing = _scope()
    del missing["body_parts"]
    with pytest.raises(ValueError, match="scope lacks body_parts"):
        parse_scope(missing)


def _bundle(tmp_path: Path, secondreader: dict[str, Any]) -> Path:
    meta = json.loads((ROOT / "models" / "cxr-pneumonia" / "configs" / "metadata.json").read_text())
    meta["secondreader"] = {k: v for k, v in meta["secondreader"].items() if k not in ("scope", "mode", "routing")}
    meta["secondreader"].update(secondreader)
    (tmp_path / "b" / "configs").mkdir(parents=True)
    (tmp_path / "b" / "configs" / "metadata.json").write_text(json.dumps(meta))
    return tmp_path / "b"


def test_a_bundle_without_scope_applies_everywhere(tmp_path: Path) -> None:
    assert load_card(_bundle(tmp_path, {})).scope is None


def test_the_shipped_bundles_declare_their_scopes() -> None:
    pneumonia = load_card(ROOT / "models" / "cxr-pneumonia").scope
    nodule = load_card(ROOT / "models" / "cxr-nodule").scope
    assert pneumonia is not None
    assert (pneumonia.age_min, pneumonia.age_max, pneumonia.unknown_age) == (1, 5, "not_applicable")
    assert nodule is not None and (nodule.age_min, nodule.age_max, nodule.unknown_age) == (18, None, "applies")
    for scope in (pneumonia, nodule):
        assert set(scope.views) == {"PA", "AP"} and set(scope.modalities) == {"CR", "DX"}
        assert scope.body_parts == ("CHEST",) and scope.population


def test_a_bad_scope_in_a_bundle_is_a_model_error_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"model bundle b: scope\.unknown_age must be"):
        load_card(_bundle(tmp_path, {"scope": _scope(unknown_age="no")}))


def test_a_picture_without_a_header_follows_each_models_unknown_age() -> None:
    """A PNG has no header: no age, view, modality or body part. The paediatric model does not
    apply to it (its unknown_age), the adult model does."""
    from secondreader.pipeline import scope_reasons

    class _Card:  # only the card matters to the scope decision
        def __init__(self, name: str) -> None:
            self.card = load_card(ROOT / "models" / name)

    reasons = scope_reasons(None, [_Card("cxr-pneumonia"), _Card("cxr-nodule")])  # type: ignore[list-item]
    assert reasons == {load_card(ROOT / "models" / "cxr-pneumonia").ref:
                       "cxr-pneumonia is validated on children aged 1-5 years; patient age unknown"}
