"""Reading whitespace-separated label files with errors that name the file and the line."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from ghns.errors import DataError

Parser = Callable[[str], object]


def _parse_int(text: str) -> int:
    return int(text)


def _parse_float(text: str) -> float:
    return float(text)


PARSERS: dict[str, Parser] = {"int": _parse_int, "float": _parse_float, "str": str}


def read_rows(path: Path, columns: Sequence[tuple[str, str]], *, skip: int = 0,
              rest_is_text: bool = False, expected_count_line: bool = False) -> list[tuple]:
    """Parse ``path`` into tuples typed by ``columns`` = [(name, 'int'|'float'|'str'), ...].

    ``skip`` header lines are skipped (after the count line when ``expected_count_line``: the
    DeepFashion files start with the number of rows, which is then checked). With
    ``rest_is_text`` the last column takes the rest of the line, spaces included. Blank lines
    are ignored. A malformed line is a ``DataError`` naming file, line number and content.
    """
    if not path.is_file():
        raise DataError(f"label file not found: {path}")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    start, expected = 0, None
    if expected_count_line:
        if not lines:
            raise DataError(f"{path}: empty file")
        try:
            expected = int(lines[0].strip())
        except ValueError:
            raise DataError(f"{path} line 1: expected the number of rows, got {lines[0].strip()!r}") from None
        start = 1
    start += skip
    n = len(columns)
    names = " ".join(f"<{c}>" for c, _ in columns)
    out = []
    for lineno, line in enumerate(lines[start:], start=start + 1):
        text = line.strip()
        if not text:
            continue
        fields = text.split(maxsplit=n - 1) if rest_is_text else text.split()
        if len(fields) != n:
            raise DataError(f"{path} line {lineno}: expected '{names}', got {text!r}")
        try:
            out.append(tuple(PARSERS[kind](value) for (_, kind), value in zip(columns, fields)))
        except ValueError:
            raise DataError(f"{path} line {lineno}: expected '{names}', got {text!r}") from None
    if expected is not None and expected != len(out):
        raise DataError(f"{path}: line 1 says {expected} rows, the file has {len(out)}")
    return out


def as_dict(rows: list[tuple], path: Path, what: str) -> dict:
    """``{first: rest}`` from parsed rows, with an error naming the file on a repeated key."""
    out: dict = {}
    for row in rows:
        key = row[0]
        if key in out:
            raise DataError(f"{path}: {what} {key} appears twice")
        out[key] = row[1] if len(row) == 2 else row[1:]
    return out
