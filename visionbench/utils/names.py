"""Names are data, not markup. `storable(text)` keeps them writable to any UTF-8 or XML file; `literal_text(fig)`,
called on every figure just before it is saved, makes matplotlib draw them as written. (Markdown and HTML escaping
live in report/tables.py and report/page.py, rich markup is turned off where names are printed.)

Class, run, experiment, metric and parameter names are data. Left to matplotlib, a name with two `$` is parsed as
math text (`$\\foo{$` raises ValueError and loses the figure; `a_$b^c$` shows a sub- and a superscript), and with
`text.usetex` set in a user's matplotlibrc every label goes to LaTeX. Text objects have had `parse_math` since
matplotlib 3.5, which turns math text off per text; the tick labels that a numeric formatter writes keep it (a log
axis's `$\\mathdefault{10^{-3}}$` is math text on purpose).

The SVG backend copies each text into an XML comment, and XML 1.0 cannot hold most control characters, nor can any
UTF-8 file hold a lone surrogate (what a file name that is not UTF-8 decodes to): those characters are shown as
U+FFFD, in figures, report.md and report.html alike. A figure's image grows with its longest text, so a drawn line
keeps at most `MAX_LINE_CHARS` characters.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# Characters outside XML 1.0's Char production: C0 controls but tab, newline and carriage return; lone surrogates;
# U+FFFE and U+FFFF.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
REPLACEMENT = "\ufffd"
# Characters of one drawn line: a longer one keeps its two ends around an ellipsis. A run directory's name (255
# bytes at most) with the words of a title fits; a 2,000-character class name took 11 s and a 1.3 MB PNG to draw,
# a 20,000-character one ran out of memory (the image grows with the text).
MAX_LINE_CHARS = 300


def storable(text: str) -> str:
    """`text` with each character that an XML or UTF-8 file cannot hold replaced by U+FFFD; the rest as it is."""
    return _NOT_XML.sub(REPLACEMENT, text)


def _drawable(text: str) -> str:
    """`storable(text)` with each line longer than `MAX_LINE_CHARS` cut in the middle."""
    half = MAX_LINE_CHARS // 2
    lines = storable(text).split("\n")
    return "\n".join(line if len(line) <= MAX_LINE_CHARS else f"{line[:half]}…{line[-half + 1 :]}" for line in lines)


def _numeric_formatters() -> tuple[type, ...]:
    """The tick formatters that write numbers and dates, some as math text on purpose (a log axis's 10^x)."""
    from matplotlib import dates, ticker

    return (
        ticker.ScalarFormatter,
        ticker.LogFormatter,
        ticker.LogitFormatter,
        ticker.EngFormatter,
        ticker.PercentFormatter,
        ticker.NullFormatter,
        dates.DateFormatter,
        dates.AutoDateFormatter,
        dates.ConciseDateFormatter,
    )


def _drawable_formatter(formatter):
    """A tick formatter that writes what `formatter` writes, drawable: tick labels given as names are written
    again from the formatter at every draw."""
    from matplotlib.ticker import Formatter

    class Drawable(Formatter):
        def __call__(self, x, pos=None):
            return _drawable(str(formatter(x, pos)))

        def set_locs(self, locs):
            formatter.set_locs(locs)

    return Drawable()


def _numeric_tick_labels(fig) -> set[int]:
    """ids of the texts that number formatters write (tick labels and offset texts). The other tick labels (names
    given with `set_xticks(positions, labels)`, categories) get a formatter that keeps them drawable, and exist
    from now on: a tick created while drawing would not inherit `parse_math`."""
    from matplotlib.ticker import NullLocator

    numeric = _numeric_formatters()
    ids = set()
    for ax in fig.get_axes():
        if not ax.axison:  # `ax.axis("off")` draws no tick: none is made (a grid of images spent most of its time so)
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_locator(NullLocator())
                axis.set_minor_locator(NullLocator())
            continue
        for axis in (ax.xaxis, ax.yaxis):
            ids.add(id(axis.offsetText))
            for minor in (False, True):
                formatter = (axis.minor if minor else axis.major).formatter
                if not isinstance(formatter, numeric):
                    (axis.set_minor_formatter if minor else axis.set_major_formatter)(_drawable_formatter(formatter))
                locs = axis.get_minorticklocs() if minor else axis.get_majorticklocs()
                ticks = axis.get_minor_ticks(len(locs)) if minor else axis.get_major_ticks(len(locs))
                if isinstance(formatter, numeric):
                    ids.update(id(label) for tick in ticks for label in (tick.label1, tick.label2))
    return ids


def literal_text(fig) -> None:
    """Draw every text of `fig` (titles, axis labels, legends, annotations, tick labels given as names) literally:
    math text and TeX off, characters a file cannot hold as U+FFFD, lines over `MAX_LINE_CHARS` cut in the middle.
    Tick labels of numbers are left alone."""
    from matplotlib.text import Text

    skip = _numeric_tick_labels(fig)
    for text in fig.findobj(Text):
        if id(text) in skip:
            continue
        text.set_parse_math(False)
        text.set_usetex(False)
        shown = _drawable(text.get_text())
        if shown != text.get_text():
            text.set_text(shown)


@contextmanager
def missing_glyphs_quiet() -> Iterator[None]:
    """Saving a figure whose names use characters the font lacks (CJK, emoji) draws boxes for them; matplotlib
    also warns once per character, which would print raw on stderr between a command's lines."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)
        yield
