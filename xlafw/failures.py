"""Errors after the runtime started: one message on the terminal, the traceback in a file.

Validation catches bad input before any device is touched. What can still go
wrong later is the world changing under a run (a data file deleted, a full
disk, a device out of memory in the first compile) or a bug. Either way the
terminal gets one message (what failed, at which step, what was saved, the
fix when there is one) and the exit code says whether a retry could help
(``xlafw.exit_codes``); the full traceback goes to ``error.log`` in the run
directory (``error.<process>.log`` on multi-host runs), where a bug report
needs it.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import traceback

from xlafw import storage
from xlafw.exit_codes import ExitCode

log = logging.getLogger(__name__)

# What torch_xla / PJRT put in the message of an allocation that failed.
_OUT_OF_MEMORY = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM")


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """What kind of failure an exception is, for the message and the exit code.

    Attributes:
      what: a short description (``a data file is missing``).
      fix: what to do about it, or an empty string.
      exit_code: ``RUNTIME_INPUT`` when the world changed under the run (a
        rerun with the same inputs fails the same way until they are fixed),
        ``ERROR`` otherwise.
    """

    what: str
    fix: str
    exit_code: ExitCode


def diagnose(error: BaseException) -> Diagnosis:
    """Classifies an exception raised after the runtime started."""
    text = str(error)
    if isinstance(error, FileNotFoundError):
        return Diagnosis(
            "a file the run reads is gone",
            "restore the file (data files must stay in place while a run reads them), then "
            "rerun the same command: it resumes from the newest checkpoint",
            ExitCode.RUNTIME_INPUT,
        )
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return Diagnosis(
            "the disk is full",
            "free space (or lower checkpoint.keep_last), then rerun the same command",
            ExitCode.RUNTIME_INPUT,
        )
    if isinstance(error, PermissionError):
        return Diagnosis(
            "permission denied",
            "make the path readable/writable by this user, then rerun the same command",
            ExitCode.RUNTIME_INPUT,
        )
    if isinstance(error, RuntimeError) and any(marker in text for marker in _OUT_OF_MEMORY):
        return Diagnosis(
            "a device ran out of memory",
            "check the estimate with --dry_run; lower data.global_batch_size or seq_len, raise "
            "trainer.grad_accum_steps, recompute layers (remat.checkpoint_modules), or shard "
            "over more devices",
            ExitCode.RUNTIME_INPUT,
        )
    return Diagnosis(f"{type(error).__name__}", "", ExitCode.ERROR)


def write_traceback(run_dir: str, error: BaseException, process_index: int, process_count: int):
    """Writes ``error``'s traceback into the run directory; returns the file's path or None.

    Never raises: the disk may be the thing that failed.
    """
    name = "error.log" if process_count <= 1 else f"error.{process_index}.log"
    path = storage.path(run_dir) / name
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    try:
        storage.write_text(path, text)
    except Exception as e:  # the report must still reach the terminal
        log.warning("could not write the traceback to %s: %s", path, e)
        return None
    return str(path)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (XLA's can run to hundreds of lines)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
