"""Answer extraction and exact match: the GSM8K convention and its tricky cases."""

from __future__ import annotations

import subprocess
import sys

import pytest

from peftlab.answers import exact_match, extract_answer, numbers


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so 3 + 4 = 7\n#### 7", "7"),
        ("#### 1,234", "1234"),
        ("#### 1,234,567.50", "1234567.5"),
        ("#### $5", "5"),
        ("#### -$5", "-5"),
        ("#### 12%", "12"),
        ("#### 12.", "12"),
        ("#### -3", "-3"),
        ("#### \u22123", "-3"),  # unicode minus
        ("#### +3", "3"),
        ("#### -0", "0"),
        ("#### 3.0", "3"),
        ("#### 2.50", "2.5"),
        ("#### .5", "0.5"),
        ("#### 007", "7"),
    ],
)
def test_the_number_after_the_marker_is_normalised(text, expected):
    assert extract_answer(text) == expected


def test_the_last_marker_wins_over_earlier_ones():
    # A model that keeps going after its answer often writes a second solution.
    assert extract_answer("#### 5\n\nQuestion: more?\n... #### 8") == "8"


def test_the_first_number_after_the_marker_is_the_answer_even_with_text_after_it():
    assert extract_answer("#### 72 apples, and 3 pears were left over") == "72"
    assert extract_answer("#### The answer is 72\nQuestion: 15 more") == "72"


def test_without_the_marker_the_last_number_is_the_answer():
    assert extract_answer("The answer is 12.") == "12"
    assert extract_answer("She had 3 apples, then 10, so the answer is -4") == "-4"
    assert extract_answer("It costs $1,250.00 in total.") == "1250"


def test_a_marker_without_a_number_after_it_has_no_answer():
    # Numbers before the last marker are working, not the answer.
    assert extract_answer("3 + 4 = 7 ####") is None
    assert extract_answer("#### 7 then #### unknown") is None


def test_text_without_any_number_has_no_answer():
    assert extract_answer("") is None
    assert extract_answer("I do not know.") is None
    assert extract_answer("####") is None


def test_numbers_in_dates_and_words_follow_the_last_number_convention():
    # A hyphen after a digit or letter is not a minus sign.
    assert extract_answer("It happened on 2024-01-15") == "15"
    assert extract_answer("a well-5 b") == "5"
    assert extract_answer("the answer is in item3") == "3"
    assert numbers("2024-01-15") == ["2024", "1", "15"]


def test_separators_count_only_in_groups_of_three():
    assert numbers("1,234") == ["1234"]
    assert numbers("1,2,3") == ["1", "2", "3"]  # a list, not a number
    assert numbers("12,34") == ["12", "34"]
    assert numbers("1,2345") == ["1", "2345"]


def test_signs_and_currency_in_either_order():
    assert numbers("-$5 and $-5 and (-5) and x = \u22125") == ["-5", "-5", "-5", "-5"]


def test_a_custom_marker():
    assert extract_answer("Answer: 42, not 43", marker="Answer:") == "42"
    assert extract_answer("#### 1 then 2", marker="") == "2"  # no marker: last number


@pytest.mark.parametrize(
    "prediction, target",
    [
        ("#### 1,234", "1234"),
        ("#### 1234", "1,234"),
        ("#### 2.50", "2.5"),
        ("The answer is $18.", "18"),
        ("#### \u22127", "-7"),
        ("#### 0", "-0"),
        ("work...\n#### 72", "... #### 72"),  # a full reference solution as the target
    ],
)
def test_equal_values_match(prediction, target):
    assert exact_match(prediction, target)


@pytest.mark.parametrize(
    "prediction, target",
    [
        ("#### 2.51", "2.5"),
        ("#### 7", "-7"),
        ("#### 72\n#### 73", "72"),
        ("72 ####", "72"),
        ("", "72"),
        ("#### 5", ""),  # an empty target never matches
        ("no number", "no number"),  # nor one without a number
    ],
)
def test_different_values_do_not_match(prediction, target):
    assert not exact_match(prediction, target)


def test_answers_do_not_import_torch():
    code = "import sys, peftlab.answers; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
