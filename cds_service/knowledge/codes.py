"""Code checks run when the knowledge loads: a mistyped code would silently never match a patient's record.

RxNorm and CVX are digits; LOINC codes carry a Mod 10 check digit; SNOMED CT ids a Verhoeff check digit;
ICD-10-CM codes have the category shape. Both {system, code} objects and lists named after their system
("rxnorm", "cvx", "loinc", ...) are checked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
_ICD10_CODE = re.compile(r"[A-TV-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?")
_LOINC_CODE = re.compile(r"(LA|LP|LL)?\d{1,7}-\d")
_LIST_SYSTEMS = {
    "rxnorm": RXNORM, "rxnorm_ingredient": RXNORM, "cvx": CVX,
    "loinc": LOINC, "qualitative_loinc": LOINC, "quantitative_loinc": LOINC,
}


def loinc_check_digit(digits: str) -> int:
    """LOINC's Mod 10 check digit (LOINC Users' Guide)."""
    total = 0
    for position, char in enumerate(reversed(digits), start=1):
        value = int(char) * (2 if position % 2 else 1)
        total += value // 10 + value % 10
    return (10 - total % 10) % 10


_VERHOEFF_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 4, 0, 6, 7, 8, 9, 5), (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7), (4, 0, 1, 2, 3, 9, 5, 6, 7, 8), (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2), (7, 6, 5, 9, 8, 2, 1, 0, 4, 3), (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_VERHOEFF_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 5, 7, 6, 2, 8, 3, 0, 9, 4), (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7), (9, 4, 5, 3, 1, 2, 6, 8, 7, 0), (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5), (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)


def verhoeff_valid(number: str) -> bool:
    check = 0
    for i, char in enumerate(reversed(number)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[i % 8][int(char)]]
    return check == 0


def code_problem(system: str | None, code: Any) -> str | None:
    """Why a code is malformed for its system, or None."""
    if not isinstance(code, str) or code != code.strip() or not code:
        return "not a trimmed non-empty string"
    if system == RXNORM and not re.fullmatch(r"\d{1,8}", code):
        return "RxNorm codes are digits"
    if system == CVX and not re.fullmatch(r"\d{1,3}", code):
        return "CVX codes are 1-3 digits"
    if system == LOINC:
        if not _LOINC_CODE.fullmatch(code):
            return "LOINC codes look like 1234-5 (or LA1234-5)"
        number, check = code.split("-")
        if number.isdigit() and loinc_check_digit(number) != int(check):  # answer codes (LA...) use another scheme
            return f"LOINC check digit should be {loinc_check_digit(number)}"
    if system == SNOMED and not (re.fullmatch(r"\d{6,18}", code) and verhoeff_valid(code)):
        return "SNOMED CT ids are 6-18 digits ending in a Verhoeff check digit"
    if system == ICD10CM and not _ICD10_CODE.fullmatch(code):
        return "not an ICD-10-CM code or category"
    return None


def code_problems(document: Any) -> list[str]:
    """Every malformed code in a knowledge file, with its path ("$.drug_levels[0].loinc[0] ...")."""
    problems = []
    for path, system, code in _coded_values(document, "$"):
        problem = code_problem(system, code)
        if problem:
            problems.append(f"{path} {system}|{code}: {problem}")
    return problems


def _coded_values(node: Any, path: str) -> Iterator[tuple[str, str | None, Any]]:
    if isinstance(node, dict):
        if "system" in node and "code" in node:
            yield path, node["system"], node["code"]
        for key, value in node.items():
            if key in _LIST_SYSTEMS:
                for i, code in enumerate(value if isinstance(value, list) else [value]):
                    yield f"{path}.{key}[{i}]", _LIST_SYSTEMS[key], code
            else:
                yield from _coded_values(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _coded_values(item, f"{path}[{i}]")
