"""One exception type for every contract violation, so both CLIs can print one clear line."""
from __future__ import annotations


class FormatError(ValueError):
    """A file does not match its documented format.

    The message always names the file (or URL) and what was expected, e.g.
    ``rounds/3/hard_samples.json: field 'samples[4].label' must be an int, got 'cat'``.
    """

    def __init__(self, where: str, problem: str):
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")


def one_line(e: BaseException) -> str:
    """An exception as the one line both CLIs print for bad input (the file name folded in for
    OSErrors whose message lacks it)."""
    text = " ".join(str(e).split())
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
        text = f"{e.filename}: {text}"
    return text or type(e).__name__
