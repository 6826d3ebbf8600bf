"""Text analysis shared by the BM25 index, the answerers and the test sets: tokens, dates, OCR digit repair, n-grams.

Kept out of the index layer so that callers that only need tokens (mmrag.answer, mmrag.testsets) import this light
module (standard library only), not the indexes and their numpy/torch dependencies.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from datetime import date

# Bump TOKENIZER_VERSION when tokenize() changes, ANALYZER_VERSION when analyze() or char_ngrams() change: the BM25
# index names both in its saved MODEL, so an index saved with another version fails its manifest check on load (and
# is rebuilt from SQL).
TOKENIZER_VERSION = "mmrag-tokenize-1"
ANALYZER_VERSION = "dates-ngram3-ocrdigits-monthday-ocrmonths-digitslips-compact-amounts-gluedtime-labelcolon-6"
DATE_PREFIX = "date:"
AMOUNT_PREFIX = "amount:"
NGRAM = 3  # character n-gram length: short enough that a word misread by a letter or two still shares most of them

_TOKEN = re.compile(
    r"""
      (?P<number>\d+(?:[.,/:\-]\d+)*)             # 12.50  1,234.56  2018-03-04  03/04/2018  10:30
    | (?P<glued>[^\W\d_]+\d+(?:[.,]\d+)*)         # letters glued to an amount: RM9.00  USD12  A4
    | (?P<word>[^\W_]+)                           # any other run of letters/digits, in any script
    """,
    re.VERBOSE,
)
_LETTERS_THEN_NUMBER = re.compile(r"([^\W\d_]+)(.*)")
_COMPOUND_SEPARATORS = re.compile(r"[/:\-]")


def tokenize(text: str) -> list[str]:
    """Split text into lowercase search tokens, keeping numbers, dates and amounts whole.

    - NFKC-normalised and case-folded, so full-width digits, ligatures and case do not matter.
    - Words are runs of Unicode letters/digits; punctuation separates them ("e-mail" -> "e", "mail").
    - A number keeps its inner separators: "12.50", "1,234.56", "2018-03-04", "03/04/2018", "10:30" stay single
      tokens. Dates, times and ranges ("-", "/", ":") also yield their parts ("2018", "03", "04") so a query for
      the year finds them; amounts ("." and ",") do not, as "12" and "50" would match unrelated prices.
    - Letters glued to a number yield the whole token plus both halves: "RM9.00" -> "rm9.00", "rm", "9.00".
    - No stemming and no stop words: BM25's IDF already discounts common words, and stemmers mangle numbers.
    """
    tokens: list[str] = []
    # No token spans whitespace, so the text's whitespace-separated chunks are tokenized one by one, and a chunk
    # seen before (pages repeat their words) comes from a cache: tokenizing dominates a BM25 rebuild.
    for chunk in unicodedata.normalize("NFKC", text).casefold().split():
        tokens.extend(_tokenize_chunk(chunk))
    return tokens


@functools.lru_cache(maxsize=1 << 16)
def _tokenize_chunk(chunk: str) -> tuple[str, ...]:
    tokens: list[str] = []
    for match in _TOKEN.finditer(chunk):
        token = match.group(0)
        tokens.append(token)
        if match.lastgroup == "number":
            if _COMPOUND_SEPARATORS.search(token):
                tokens.extend(part for part in re.split(r"[.,/:\-]", token) if part)
        elif match.lastgroup == "glued":
            letters_then_number = _LETTERS_THEN_NUMBER.match(token)
            assert letters_then_number is not None
            tokens.extend(letters_then_number.groups())
    return tuple(tokens)


# English months, full and abbreviated; longest alternatives first so "sept" is not read as "sep" + "t".
_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"), ("may",), ("june", "jun"),
            ("july", "jul"), ("august", "aug"), ("september", "sept", "sep"), ("october", "oct"),
            ("november", "nov"), ("december", "dec"),
        ),
        start=1,
    )
    for name in names
}
_MONTH = "(" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")(?![^\W\d_])\.?"
# A space may follow a separator ("12- 01-19": OCR's reading of a narrow gap), never precede one.
# A year may run into the time printed after it ("25/Feb/201707:43:54", a receipt printer's missing space).
_THEN_TIME = r"(?=\d{1,2}:\d{2})"
_YEAR = r"(\d{4}|\d{2})(?:(?!\d)|" + _THEN_TIME + ")"  # a year that ends a date written with a month's name
_NUMERIC_DATE = re.compile(
    r"(?<![\d.,/\-])(?<!\d:)(\d{1,4})([./\-]) ?(\d{1,2})\2 ?(\d{4}|\d{2})(?:(?!\d|[.,/:\-]\d)|" + _THEN_TIME + ")"
)
# Eight digits standing alone that read as a year 1970-2099, a month and a day ("20180428", as systems print them).
_COMPACT_DATE = re.compile(
    r"(?<![\w.,/:\-])((?:19[789]|20\d)\d)(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?![\w]|[.,/:\-]\d)"
)
# Digits OCR reads for others in a date's day or month ("19/62/2018": 6 for 0): tried only when no reading of the
# date as printed is a date, one digit at a time.
_DIGIT_SLIPS = {"0": "689", "1": "74", "2": "7", "3": "8", "5": "6", "6": "05", "7": "12", "8": "03", "9": "0"}
_DAY_MONTH_YEAR = re.compile(
    r"(?<![\d.,/:\-])(\d{1,2})(?:st|nd|rd|th)?[\s.,/\-]*" + _MONTH + r"[\s.,/\-]*" + _YEAR
)
_MONTH_DAY_YEAR = re.compile(
    r"(?<![^\W\d_])" + _MONTH + r"[\s.,/\-]*(\d{1,2})(?:st|nd|rd|th)?[\s.,/\-]+" + _YEAR
)
# A day, a word the OCR made of a month's abbreviation ("14/dun/2017", "14/fMay/2017"), a year, between the same
# separators: the word is read as the one month within one edit of it (see _ocr_month).
_DAY_WORD_YEAR = re.compile(
    r"(?<![\d.,/:\-])(\d{1,2})([./\-])([^\W\d_]{2,4})\2" + _YEAR
)
# A month and a day with no year, as a question puts it ("March 5th", "5 March"): month-day keys only.
_MONTH_DAY = re.compile(
    r"(?<![^\W\d_])(?<!\d)(?<!\d[\s./\-])" + _MONTH + r"[\s.,]*(\d{1,2})(st|nd|rd|th)?(?![\d.,/:\-]*\d)"
)
_DAY_MONTH = re.compile(r"(?<![\d.,/:\-])(\d{1,2})(?:st|nd|rd|th)?\s+(?:of\s+)?" + _MONTH)
_ABBREVIATIONS = {name: number for name, number in _MONTHS.items() if len(name) == 3}
MONTH_DAY_PREFIX = DATE_PREFIX + "--"  # "date:--03-10": the 10th of March of any year

# Query words that say how a question is asked, not what it is about. Removed from queries only: BM25's idf already
# discounts them in long documents, but on short pages (receipts, forms) "did", "at" or "i" are rare enough to
# outweigh a company name. A query made only of these words keeps them.
QUERY_STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are as at be been before being below between both but by
    can could did do does doing down during each few for from further had has have having he her here hers herself
    him himself his how i if in into is it its itself just me more most my myself no nor not now of off on once only
    or other our ours ourselves out over own please same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were what when where which
    while who whom whose why will with would you your yours yourself yourselves much many
    """.split()
)


def _year(text: str) -> int:
    if len(text) == 4:
        return int(text)
    return 2000 + int(text) if int(text) < 69 else 1900 + int(text)  # POSIX strptime's %y pivot


def _date_key(year: int, month: int, day: int) -> str | None:
    try:
        return f"{DATE_PREFIX}{date(year, month, day).isoformat()}"
    except ValueError:
        return None


def date_keys(text: str) -> list[str]:
    """One "date:YYYY-MM-DD" term per reading of each date in `text`, whatever its format.

    "10-03-2018", "10/03/18", "10.03.2018", "10 Mar 2018", "March 10th, 2018" and "2018-03-10" all yield
    "date:2018-03-10", so a query and a page that write one date differently still share a term. A numeric date
    whose first two parts could both be the month ("03/04/2018") yields both readings (day-month and month-day):
    the order is a locale convention no text declares, and both sides of the match get the same pair of terms.
    Two-digit years pivot like strptime's %y. Impossible dates (31/02, 1.234.567) yield nothing.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    keys: list[str] = []
    for first, _, middle, last in _NUMERIC_DATE.findall(text):
        if len(first) == 4:
            readings = [(int(first), int(middle), int(last))] if len(last) <= 2 else []
        elif len(first) <= 2:
            year = _year(last)
            readings = [(year, int(middle), int(first)), (year, int(first), int(middle))]
        else:
            readings = []
        found = [key for reading in readings if (key := _date_key(*reading))]
        if not found and len(first) <= 2:
            found = _slipped_readings(first, middle, last)
        keys.extend(dict.fromkeys(found))
    for year, month, day in _COMPACT_DATE.findall(text):
        if key := _date_key(int(year), int(month), int(day)):
            keys.append(key)
    for day, month, year in _DAY_MONTH_YEAR.findall(text):
        if key := _date_key(_year(year), _MONTHS[month], int(day)):
            keys.append(key)
    for month, day, year in _MONTH_DAY_YEAR.findall(text):
        if key := _date_key(_year(year), _MONTHS[month], int(day)):
            keys.append(key)
    for day, _, word, year in _DAY_WORD_YEAR.findall(text):
        if word not in _MONTHS and (month := _ocr_month(word)) and (key := _date_key(_year(year), month, int(day))):
            keys.append(key)
    return keys


def _slipped_readings(first: str, middle: str, year: str) -> list[str]:
    """The date keys of a numeric date none of whose readings is a date, with one digit of a day or month that no
    day can be (over 31) read as a digit OCR confuses it with (_DIGIT_SLIPS): "19/62/2018" gives 19 Feb 2018;
    "31/02/2018" stays no date. At most three: a date that many slips would mend is noise, not a date."""
    found: list[str] = []
    for which, part in ((0, first), (1, middle)):
        if int(part) <= 31:
            continue  # a number that is some day: only the pair is impossible ("31/02"), and no slip is in sight
        for i, digit in enumerate(part):
            for other in _DIGIT_SLIPS.get(digit, ""):
                mended = part[:i] + other + part[i + 1 :]
                day_part, month_part = (mended, middle) if which == 0 else (first, mended)
                for reading in ((_year(year), int(month_part), int(day_part)),
                                (_year(year), int(day_part), int(month_part))):
                    if key := _date_key(*reading):
                        found.append(key)
    found = list(dict.fromkeys(found))
    return found if len(found) <= 3 else []


def page_dates(text: str) -> list[date]:
    """Every date `text` holds (each reading of an ambiguous one, OCR's digit slips repaired), in order, once each:
    what a page is filtered on by date."""
    keys = date_keys(text) + date_keys(repair_ocr_digits(text))
    return [date.fromisoformat(key[len(DATE_PREFIX):]) for key in dict.fromkeys(keys)]


def _ocr_month(word: str) -> int | None:
    """The month whose three-letter abbreviation is one edit (a letter changed, added or dropped) from `word`, when
    exactly one is: OCR's "dun" is June, "fmay" May; "mat" (March or May) is none."""
    found = {number for name, number in _ABBREVIATIONS.items() if one_edit(word, name)}
    return found.pop() if len(found) == 1 else None


def one_edit(a: str, b: str) -> bool:
    """Whether `a` and `b` differ by exactly one letter changed, added or dropped (OCR's "tatal" for "total")."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b, strict=True)) == 1
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


def month_day_keys(text: str, dates: list[str]) -> list[str]:
    """One "date:--MM-DD" term per month and day: of each date key in `dates` (a page's or a question's dates, whose
    year OCR often misreads: 2018 printed, 2016 read), and of each month-day `text` writes without a year
    ("March 5th", "5 March"). A question and a page then still share a term when the years disagree."""
    keys = [f"{MONTH_DAY_PREFIX}{key[len(DATE_PREFIX) + 5 :]}" for key in dates if not key.startswith(MONTH_DAY_PREFIX)]
    text = unicodedata.normalize("NFKC", text).casefold()
    for month, day, ordinal in _MONTH_DAY.findall(text):
        if month != "may" or ordinal:  # "may 5 people" is no date; "May 5th" is
            keys.append(_month_day(_MONTHS[month], int(day)))
    for day, month in _DAY_MONTH.findall(text):
        keys.append(_month_day(_MONTHS[month], int(day)))
    return [key for key in dict.fromkeys(keys) if key]


def _month_day(month: int, day: int) -> str:
    return f"{MONTH_DAY_PREFIX}{month:02d}-{day:02d}" if _date_key(2000, month, day) else ""  # 2000: has a 29 Feb


_LOOKALIKES = str.maketrans({"o": "0", "O": "0", "D": "0", "l": "1", "I": "1", "i": "1", "S": "5", "s": "5",
                              "B": "8", "Z": "2", "z": "2"})
_NUMERIC_LOOKING = re.compile(r"(?<![\w])(?=[\w.,/:-]*\d[\w.,/:-]*\d)[0-9oODlIiSsBZz]+(?:[.,/:-][0-9oODlIiSsBZz]+)+(?![\w])")


def repair_ocr_digits(text: str) -> str:
    """Numbers and dates with OCR's letter-for-digit slips read as digits ("O7/03/2O18" → "07/03/2018").

    Only inside runs that already hold two digits and separators (dates, amounts, codes), so words are untouched.
    """
    return _NUMERIC_LOOKING.sub(lambda match: match.group(0).translate(_LOOKALIKES), text)


# An amount with two decimals, "." or "," before them (OCR reads one for the other, and half the world writes ","),
# thousands grouped or not: "9.00", "4,90", "1,234.56", "1234.56". Not inside a longer run of digits and
# separators, so dates ("10.03.2018"), times and codes are no amounts.
_DECIMAL_AMOUNT = re.compile(r"(?<![\d.,/:\-])(\d{1,3}(?:,\d{3})+|\d+)[.,](\d{2})(?![\d]|[.,/:\-]\d)")
# A whole amount after a currency: "RM 15", "$1,200", "EUR 30" (a question's "RM 15" is the receipt's "15.00").
_CURRENCY_AMOUNT = re.compile(
    r"(?:(?<![^\W\d_])(?:rm|myr|usd|sgd|eur|gbp|idr|aud)|[$€£¥])\s?(\d{1,3}(?:,\d{3})+|\d+)(?![\d]|[.,]\d)"
)


def amount_keys(text: str) -> list[str]:
    """One "amount:N.NN" term per amount in `text`, however it is written: "15.00", "15,00", "RM 15", "RM15",
    "$15" all give "amount:15.00"; "1,234.56" and "1234.56" give "amount:1234.56". Integers without a currency
    are not amounts (a quantity, a page number, a year)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    keys = [f"{AMOUNT_PREFIX}{int(whole.replace(',', ''))}.{cents}" for whole, cents in _DECIMAL_AMOUNT.findall(text)]
    keys += [f"{AMOUNT_PREFIX}{int(whole.replace(',', ''))}.00" for whole in _CURRENCY_AMOUNT.findall(text)]
    return list(dict.fromkeys(keys))


def analyze(text: str) -> list[str]:
    """The word terms BM25 indexes and searches: tokenize()'s tokens plus one key per reading of each date and one
    per amount (amount_keys).

    Both sides of a match go through this same function, so a date written two ways still meets. Numbers and
    dates with OCR letter-for-digit slips also yield their repaired reading's terms.
    """
    terms = _terms(text)
    repaired = repair_ocr_digits(text)
    if repaired != text:
        seen = set(terms)
        terms += [term for term in _terms(repaired) if term not in seen]
    return terms


def _terms(text: str) -> list[str]:
    dates = date_keys(text)
    return tokenize(text) + dates + month_day_keys(text, dates) + amount_keys(text)


def date_terms(text: str) -> list[str]:
    """The date terms analyze() gives `text` (full dates, then months and days), once each: its dates as a field."""
    return list(dict.fromkeys(term for term in analyze(text) if term.startswith(DATE_PREFIX)))


_DATE_FORMS = (_NUMERIC_DATE, _COMPACT_DATE, _DAY_MONTH_YEAR, _MONTH_DAY_YEAR, _DAY_WORD_YEAR)


def without_dates(text: str) -> str:
    """`text` casefolded with its dates blanked out (each form date_keys reads, and a month and day a question
    writes without a year): what the rest of a question asks for ("gin kee receipt from 18/10/2017" → the shop)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    for form in (*_DATE_FORMS, _MONTH_DAY, _DAY_MONTH):
        text = form.sub(" ", text)
    return text


def query_terms(text: str) -> list[str]:
    """analyze() without QUERY_STOPWORDS, unless nothing else is left."""
    terms = analyze(text)
    content = [term for term in terms if term not in QUERY_STOPWORDS]
    return content or terms


def char_ngrams(terms: Iterable[str], n: int = NGRAM) -> list[str]:
    """Character n-grams of each term, padded with "#" at both ends ("total" → "#to", "tot", "ota", "tal", "al#").

    Date and amount keys stay whole: they are already normalised, and their digits would match every other one.
    """
    grams: list[str] = []
    for term in terms:
        if term.startswith((DATE_PREFIX, AMOUNT_PREFIX)):
            grams.append(term)
            continue
        grams.extend(_term_ngrams(term, n))
    return grams


@functools.lru_cache(maxsize=1 << 16)
def _term_ngrams(term: str, n: int) -> tuple[str, ...]:
    # Cached: a collection repeats its words page after page.
    padded = f"#{term}#"
    return tuple(padded[i : i + n] for i in range(max(1, len(padded) - n + 1)))
