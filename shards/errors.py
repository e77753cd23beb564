"""One exception type for every contract violation, so both CLIs can print one clear line."""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator


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


@contextlib.contextmanager
def cli_errors(prog: str, verbose: bool, interrupted: str = "interrupted",
               bad_input: tuple[type[BaseException], ...] = (ValueError, OSError, TimeoutError),
               failures: tuple[type[BaseException], ...] = (RuntimeError,)) -> Iterator[None]:
    """Every CLI's exit statuses, around its body: one line on stderr, no traceback.

    ``bad_input`` (FormatError and config errors are ValueErrors, missing files OSErrors) exits
    with 2 as ``<prog>: error: ...``; ``failures`` (a device, a worker, a subprocess) with 1 as
    ``<prog>: failed: ...``; Ctrl-C with 130 and ``interrupted`` (what to do next). ``verbose``
    also logs the traceback. Click's own usage errors pass through to click.
    """
    import click

    try:
        yield
    except click.ClickException:
        raise
    except KeyboardInterrupt:
        click.echo(f"{prog}: {interrupted}", err=True)
        sys.exit(130)
    except bad_input as e:
        if verbose:
            logging.getLogger(prog).exception("failed")
        click.echo(f"{prog}: error: {one_line(e)}", err=True)
        sys.exit(2)
    except failures as e:
        if verbose:
            logging.getLogger(prog).exception("failed")
        click.echo(f"{prog}: failed: {one_line(e)}", err=True)
        sys.exit(1)
