"""Reading a numeric score out of a free-text judgment.

A parser that reads only `\nScore: N` integers misses `4.5`, quoted and inline scores, and a
judge that drops its score turns into silently missing pairs. Here: the text is normalised first (NFKC, markdown emphasis removed, curly quotes
made straight), the template's pattern is searched case-insensitively, the LAST match wins (a judge
often quotes the format or other scores before its own verdict), and a value outside
`[min_score, max_score]` makes the whole judgment unparsed rather than clipped.
"""

import math
import unicodedata
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from judging.template import JudgeTemplate

__all__ = ["normalize_judgment", "parse_score"]

# Markdown emphasis and code marks around "Score:" would otherwise sit between the word and the number.
_STRIP = str.maketrans("", "", "*`")
_QUOTES = str.maketrans({
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
})


def normalize_judgment(text: str) -> str:
    """The judgment text as the score pattern sees it.

    NFKC folds full-width digits and colons to ASCII; `*` and backticks are removed so
    `**Score:** 4` and `**Score: 4**` read as `Score: 4`; curly quotes become straight ones.
    """
    return unicodedata.normalize("NFKC", text).translate(_QUOTES).translate(_STRIP)


def parse_score(text: str, template: "JudgeTemplate") -> float | None:
    """The judge's score in `text`, or None when there is none or it is out of range.

    Args:
        text: one judgment as generated (any string; non-strings give None).
        template: supplies the pattern (one capture group) and the valid range.

    Returns:
        The last matched score as a float if it lies in `[min_score, max_score]`, else None.
        Never raises on malformed input.
    """
    if not isinstance(text, str):
        return None
    tail = deque(template.regex.finditer(normalize_judgment(text)), maxlen=1)  # only the last match
    if not tail or tail[0].group(1) is None:
        return None
    last = tail[0]
    try:
        value = float(last.group(1))
    except ValueError:  # a user pattern may capture something that is not a number
        return None
    if not math.isfinite(value) or not template.min_score <= value <= template.max_score:
        return None
    return value
