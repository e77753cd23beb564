"""One exception type for every contract violation, and one exit-status block for every CLI."""
from __future__ import annotations

import contextlib
import datetime
import errno
import logging
import os
import re
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Iterator, Optional


class FormatError(ValueError):
    """A file does not match its documented format.

    The message always names the file (or URL) and what was expected, e.g.
    ``rounds/3/hard_samples.json: field 'samples[4].label' must be an int, got 'cat'``.
    """

    def __init__(self, where: str, problem: str):
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")


class Unreachable(ConnectionError):
    """A location that cannot become readable by waiting: an unknown host, a bucket that does
    not exist, access denied. Reported at once with its cause; never retried, never waited for."""


def relocated(error: FormatError, copies: dict) -> FormatError:
    """``error`` naming the location the user gave instead of a local copy of it: for each
    ``{copy folder: location}``, a ``where`` (or a path in the message) inside the copy is
    rewritten to the same member of the location. An error about anything else is returned as is.
    """
    where, problem = error.where, error.problem
    for folder, location in copies.items():
        folder = str(folder).rstrip("/")
        target = str(location).rstrip("/")
        if where == folder or where.startswith(folder + "/"):
            where = target + where[len(folder):]
        problem = problem.replace(folder + "/", target + "/").replace(folder, target)
    if (where, problem) == (error.where, error.problem):
        return error
    out = type(error).__new__(type(error))
    FormatError.__init__(out, where, problem)
    out.__dict__.update({k: v for k, v in error.__dict__.items() if k not in ("where", "problem")})
    return out


WRITE_FAILURES = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO, errno.EROFS})
"""errnos of a write that failed for reasons of the machine (a full disk, a file-size limit, a
read-only or failing device), not of the input: a runtime failure (exit 1)."""


class WriteFailed(RuntimeError):
    """Writing a file failed for a reason of the machine (see :data:`WRITE_FAILURES`); names the file."""


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Around the writes of ``path``: a full disk, a file-size limit or an I/O error becomes
    :class:`WriteFailed` naming ``path`` (an ``OSError`` from ``write`` carries no file name)."""
    try:
        yield
    except OSError as e:
        if e.errno not in WRITE_FAILURES:
            raise
        raise WriteFailed(f"{path}: cannot write ({e.strerror or e})") from e


def printable(text: object) -> str:
    """``text`` safe for a terminal: every character that is not printable (control characters,
    escape sequences, bidirectional overrides) shown as its Python escape, e.g. ``\\x1b``. What a
    received data set says (class names, generator names, modes) is data, never terminal control."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)


def one_line(e: BaseException) -> str:
    """An exception as the one line the CLIs print (the file name folded in for OSErrors whose
    message lacks it; anything unprintable escaped, since messages quote files' contents)."""
    text = " ".join(str(e).split())
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
        text = f"{e.filename}: {text}"
    return printable(text) or type(e).__name__


def is_bad_input(e: BaseException,
                 bad_input: tuple[type[BaseException], ...] = (ValueError, OSError, TimeoutError)) -> bool:
    """Whether ``e`` is the user's input's fault (exit 2) rather than a failure at run time (exit 1).

    OSErrors of the machine (a full disk, a file-size limit: :data:`WRITE_FAILURES`) are failures.
    """
    if isinstance(e, OSError) and e.errno in WRITE_FAILURES:
        return False
    return isinstance(e, bad_input)


@contextlib.contextmanager
def cli_errors(prog: str, verbose: bool, interrupted: str = "interrupted",
               bad_input: tuple[type[BaseException], ...] = (ValueError, OSError, TimeoutError),
               failures: tuple[type[BaseException], ...] = (RuntimeError,),
               log_dir: Optional[str | Path] = None) -> Iterator[None]:
    """Every CLI's exit statuses, around its body: every exception becomes one line on stderr.

    ``bad_input`` (FormatError and config errors are ValueErrors, missing files OSErrors) exits
    with 2 as ``<prog>: error: ...``; ``failures`` (a device, a worker, a subprocess, a full disk)
    and any other exception with 1 as ``<prog>: failed: ...``; Ctrl-C with 130 and SIGTERM (how
    schedulers preempt a job) with 143, both as ``interrupted`` (what to do next). With
    ``verbose`` (``--debug``) the traceback is logged on stderr; otherwise every non-zero exit's
    traceback is written to a log file (in ``log_dir``, default the temporary folder) that the line
    names. Click's own usage errors and exits pass through to click.
    """
    import click

    previous = _handle_sigterm()
    try:
        yield
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except KeyboardInterrupt as e:
        # Ctrl-C, or SIGTERM (how schedulers preempt): the same clean stop, told apart by status.
        terminated = isinstance(e, Terminated)
        what = interrupted.replace("interrupted", "terminated (SIGTERM)", 1) if terminated else interrupted
        click.echo(f"{prog}: {what}", err=True)
        sys.exit(143 if terminated else 130)
    except Exception as e:
        bad = is_bad_input(e, bad_input)
        if verbose:
            logging.getLogger(prog).exception("failed")
        if bad:
            # Bad input keeps its traceback in a file too; the line names the file only when the
            # error was raised inside a library (torch, diffusers...), where the message alone may
            # not say which input was at fault.
            where = "" if verbose else _traceback_file(prog, e, log_dir)
            click.echo(f"{prog}: error: {one_line(e)}{where if _raised_in_a_library(e) else ''}", err=True)
            sys.exit(2)
        where = "" if verbose else _traceback_file(prog, e, log_dir)
        click.echo(f"{prog}: failed: {_describe(e, failures)}{where}", err=True)
        sys.exit(1)
    finally:
        # A command run in-process (a notebook, a test) leaves SIGTERM as it found it.
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


def _raised_in_a_library(e: BaseException) -> bool:
    """Whether the innermost frame of ``e``'s traceback lies outside ActGen's own code."""
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return not str(tb.tb_frame.f_globals.get("__name__", "")).startswith("actgen.")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it stops as cleanly as on Ctrl-C."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _handle_sigterm():
    """SIGTERM raises :class:`Terminated` in the main thread (not elsewhere: signals go there)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def _describe(e: BaseException, expected: tuple[type[BaseException], ...]) -> str:
    """The failure's line; an exception nobody raises on purpose keeps its type name."""
    line = one_line(e)
    if isinstance(e, (*expected, OSError)) or line.startswith(type(e).__name__):
        return line
    return f"{type(e).__name__}: {line}"


def _traceback_file(prog: str, e: BaseException, log_dir: Optional[str | Path]) -> str:
    """Write ``e``'s traceback to a new log file; -> `` (traceback in <file>)``, or "" when it
    cannot be written (a full disk: the line says what failed anyway)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = None
    try:
        directory = Path(log_dir) if log_dir is not None else Path(tempfile.gettempdir())
        fd, name = tempfile.mkstemp(prefix=f"{prog}-{stamp}-", suffix=".log", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"{prog} {' '.join(sys.argv[1:])}\n\n")
            f.write("".join(traceback.format_exception(type(e), e, e.__traceback__)))
    except OSError:
        if name is not None:
            with contextlib.suppress(OSError):
                os.unlink(name)
        return ""
    return f" (traceback in {name}; --debug prints it)"


def load_refusal(e: BaseException, what: str) -> str:
    """One line for a ``torch.load(weights_only=True)`` that failed on a file. torch's message
    spans lines and advises rerunning with the weights-only check turned off: exactly what must
    never be done with a file from elsewhere, so that advice is dropped and the real reason kept
    (e.g. ``Trying to load unsupported GLOBAL posix.system``)."""
    text = str(e)
    if "WeightsUnpickler error:" in text:                 # older torch wording
        text = text.split("WeightsUnpickler error:", 1)[1]
    boilerplate = ("weights only load failed", "weights_only", "check the documentation", "re-running",
                   "in pytorch 2.6")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = next((line for line in lines if not any(b in line.lower() for b in boilerplate)), "")
    reason = printable(reason.split(" Please use")[0][:200])
    # Only a pickle that asks for code (a global, a class) is a refusal; junk bytes fail the same
    # unpickler with e.g. "Unsupported operand 110" and are simply not a readable file.
    unpickler = "weights only load failed" in str(e).lower() or "weightsunpickler" in str(e).lower()
    if unpickler and re.search(r"global|unsupported class|reduce", reason, re.IGNORECASE):
        return (f"refused: not a plain-tensor {what} ({reason or type(e).__name__}); it is loaded with "
                "weights_only=True and never runs pickled code")
    return f"not a readable {what} ({type(e).__name__}{': ' + reason if reason else ''})"

