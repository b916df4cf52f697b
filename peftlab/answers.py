"""Final answers in generated text, and exact match against a reference answer.

The convention (GSM8K): a solution ends with ``#### <answer>``. The answer of a
text is the first number after the **last** marker; a text without the marker
answers with its **last** number (a model that forgot the marker but ended
with "The answer is 12." still answers 12). When the last marker is followed by
no number the text has no answer (None), as the reference scorer, which reads
only what follows the marker, would find none; the numbers before that marker
are working, not the answer.

A number is written in ASCII digits, with an optional sign (``-``, ``+`` or
the unicode minus ``−``), an optional ``$`` after the sign, thousands
separators in groups of three (``1,234,567``) and an optional decimal part
(``2.50``, ``.5``). A trailing ``.`` (end of a sentence) or ``%`` is not part
of it. A ``-`` right after a letter or digit is a hyphen, not a sign, so a
date such as 2024-01-15 reads as the numbers 2024, 01 and 15. Digits inside a
word count (``item3`` holds the number 3), as the last-number convention reads
every digit run.

Numbers are normalised so that equal values are equal strings: separators and
``$`` dropped, trailing decimal zeros dropped (``2.50`` -> ``2.5``, ``3.0`` ->
``3``), ``-0`` -> ``0``, ``.5`` -> ``0.5``, ``+7`` -> ``7``, ``007`` -> ``7``.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

UNICODE_MINUS = "\u2212"

_NUMBER = re.compile(
    r"""
    (?P<sign>(?<![A-Za-z0-9])[-+\u2212])?   # a sign, unless it is a hyphen after a word or digit
    \$?                                     # a currency sign
    (?P<digits>
        (?<![0-9,.])[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])(?:\.[0-9]+)?   # 1,234 or 1,234.5
      | [0-9]+(?:\.[0-9]+)?                                          # 1234 or 2.50
      | (?<![0-9.])\.[0-9]+                                          # .5
    )
    """,
    re.VERBOSE,
)


def normalize_number(sign: str, digits: str) -> str:
    """The canonical string of a number given its sign and its digits (separators allowed)."""
    value = Decimal(digits.replace(",", ""))
    if sign in ("-", UNICODE_MINUS):
        value = -value
    if value == value.to_integral_value():
        return str(int(value))  # also turns -0 into 0
    # normalize() drops trailing zeros; the "f" format keeps it out of exponent notation.
    return format(value.normalize(), "f")


def numbers(text: str) -> list[str]:
    """Every number of ``text``, in order, normalised (see the module docstring)."""
    found = []
    for match in _NUMBER.finditer(text):
        try:
            found.append(normalize_number(match.group("sign") or "", match.group("digits")))
        except InvalidOperation:  # unreachable for what the pattern matches; skip rather than fail
            continue
    return found


def extract_answer(text: str, marker: str = "####") -> str | None:
    """The normalised final answer of ``text``, or None when it states no number.

    With ``marker`` in the text: the first number after its last occurrence (None
    if there is none). Without it: the last number of the text.
    """
    if marker and marker in text:
        after = numbers(text.rpartition(marker)[2])
        return after[0] if after else None
    found = numbers(text)
    return found[-1] if found else None


def exact_match(prediction_text: str, target_answer: str, marker: str = "####") -> bool:
    """True when the answer extracted from ``prediction_text`` equals the reference answer.

    ``target_answer`` is read the same way (so ``"1,234"``, ``"$1234"`` and
    ``"#### 1234"`` are all 1234); a target without a number never matches.
    """
    target = extract_answer(target_answer, marker)
    if target is None:
        return False
    return extract_answer(prediction_text, marker) == target
