"""The patient's age at the study, from the header: a pure function, never raising.

Models declare the ages they were validated on (:class:`secondreader.model.card.ModelScope`), so
screening needs each instance's age. It comes from Patient's Age (VR AS: three digits and a unit,
``053Y``, ``006M``, ``010W``, ``003D``), else from Patient's Birth Date and the Study Date (or the
Series Date, or the Acquisition Date, when the Study Date is missing). Anything malformed (``53``,
``ABCY``, ``999Q``, a birth date after the study) counts as unknown: ``None``.

Only the age leaves this module, never the birth date, and its text is rebuilt from the parsed
numbers (``053Y``, ``53 years``), never copied from the header, so a value that is not an age
cannot travel into a reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

__all__ = ["PatientAge", "age_from_header", "parse_age_string", "parse_da"]

_AS = re.compile(r"^(\d{3})([DWMY])$")
_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_DAYS_PER_YEAR = 365.2425


@dataclass(frozen=True, slots=True)
class PatientAge:
    """An age at the time of the study: ``years`` in completed years (``006M`` is 0, ``071M`` is
    5), ``text`` as a reason may show it (``053Y``; ``53 years`` when computed from the dates)."""

    years: int
    text: str

    def __post_init__(self) -> None:
        if self.years < 0:
            raise ValueError(f"an age cannot be negative ({self.years})")


def parse_age_string(value: object) -> PatientAge | None:
    """Patient's Age (AS) → the age, or ``None`` when absent or malformed. Completed years: days
    and weeks are counted in days (365.2425 a year), months in twelfths."""
    if value is None:
        return None
    text = str(value).strip().upper()
    match = _AS.fullmatch(text)
    if match is None:
        return None
    number, unit = int(match.group(1)), match.group(2)
    if unit == "Y":
        years = number
    elif unit == "M":
        years = number // 12
    elif unit == "W":
        years = int(number * 7 / _DAYS_PER_YEAR)
    else:
        years = int(number / _DAYS_PER_YEAR)
    return PatientAge(years, f"{number:03d}{unit}")


def parse_da(value: object) -> date | None:
    """A DICOM date (DA, ``YYYYMMDD``) → a date, or ``None`` when absent or not a real date."""
    if value is None:
        return None
    match = _DA.fullmatch(str(value).strip())
    if match is None:
        return None
    try:
        return date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        return None


def _completed_years(birth: date, on: date) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def age_from_header(patient_age: object, birth_date: object = None, *study_dates: object) -> PatientAge | None:
    """The patient's age: Patient's Age when it is well formed, else the completed years between
    the birth date and the first of ``study_dates`` that is a date (pass Study Date, Series Date,
    Acquisition Date in that order); ``None`` when neither gives one."""
    age = parse_age_string(patient_age)
    if age is not None:
        return age
    birth = parse_da(birth_date)
    if birth is None:
        return None
    on = next((d for d in (parse_da(v) for v in study_dates) if d is not None), None)
    if on is None or on < birth:
        return None
    years = _completed_years(birth, on)
    return PatientAge(years, f"{years} year{'s' if years != 1 else ''}")
