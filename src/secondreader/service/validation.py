"""Strict parsing of what HTTP clients send: DICOM UIDs, integers and numbers in query strings and
headers, and JSON bodies with a bounded nesting depth.

Every route uses these, so that malformed input is a 400 (never a 500 from ``int("²")``, a file name
too long for the file system, or a RecursionError) and the messages name the parameter, never its
value; and every route answers a problem the same way (:func:`error_response`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.responses import JSONResponse

from ..errors import InvalidInputError

__all__ = ["MAX_JSON_DEPTH", "MAX_UID_CHARS", "error_response", "is_uid", "json_depth", "loads_json", "strict_int",
           "strict_number"]

MAX_UID_CHARS = 64  # PS3.5 §9.1: digits and dots, at most 64 characters
MAX_JSON_DEPTH = 32  # a first read, a FHIR DiagnosticReport or a verdict needs far less

_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*", re.ASCII)
_INT = re.compile(r"[0-9]{1,18}", re.ASCII)
_NUMBER = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9})?", re.ASCII)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def error_response(status: int, error: str, reason: str) -> JSONResponse:
    """The answer every route gives a request it cannot serve (contract 3): ``{"error": <the status's
    name>, "reason": <what is wrong, naming the parameter, never echoing the client's value>}``."""
    return JSONResponse({"error": error, "reason": reason}, status_code=status)


def is_uid(value: object) -> bool:
    """True for a DICOM UID: digits and dots (ASCII), no empty component, 1 to 64 characters.
    A component with a leading zero is accepted (older devices write them)."""
    return (isinstance(value, str) and 0 < len(value) <= MAX_UID_CHARS
            and _UID.fullmatch(value) is not None)


def strict_int(raw: str | None, name: str, *, low: int, high: int, default: int | None = None) -> int:
    """``raw`` as an integer of ASCII digits within [low, high]; ``default`` when absent."""
    if raw is None or raw == "":
        if default is None:
            raise InvalidInputError(f"{name} is required")
        return default
    if _INT.fullmatch(raw) is None or not low <= int(raw) <= high:
        raise InvalidInputError(f"{name} must be a whole number from {low} to {high}")
    return int(raw)


def strict_number(raw: str | None, name: str, *, low: float, high: float) -> float | None:
    """``raw`` as a plain decimal number (ASCII digits, at most one point) within [low, high];
    None when absent."""
    if raw is None or raw == "":
        return None
    if _NUMBER.fullmatch(raw) is None or not low <= float(raw) <= high:
        raise InvalidInputError(f"{name} must be a number from {low:g} to {high:g}")
    return float(raw)


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in ``text`` (strings skipped), without parsing it."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub("", text)):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def loads_json(text: str, *, max_depth: int = MAX_JSON_DEPTH, what: str = "the body") -> Any:
    """``json.loads(text)``, refusing (InvalidInputError) malformed JSON and nesting deeper than
    ``max_depth`` before the parser recurses into it."""
    if json_depth(text) > max_depth:
        raise InvalidInputError(f"{what} is nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise InvalidInputError(f"{what} is not JSON") from None
