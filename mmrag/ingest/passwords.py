"""Passwords for encrypted PDFs: which to try on which file. Held in memory only: never logged, stored or printed.

The password file `mmrag index --password-file FILE` reads has one rule per line, `PATTERN PASSWORD`:

    # finance exports share one password; quote a pattern that holds spaces
    *.pdf                      first guess for every PDF
    /srv/scans/finance/*       s3cret
    "/srv/scans/HR files/*"    another one

A pattern without `/` matches a file's name, one with `/` its whole absolute path (`*` crosses folders; `~` is
the home folder). The password is the rest of the line after the blanks that follow the pattern, spaces and all.
Every rule whose pattern matches is tried, in the file's order, after trying no password. Blank lines and lines
starting with `#` are skipped.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from mmrag.errors import ConfigError


class PasswordBook:
    """(pattern, password) rules in order; `for_path` gives the passwords to try on a file."""

    __slots__ = ("_rules",)

    def __init__(self, rules: Sequence[tuple[str, str]] = ()) -> None:
        self._rules = tuple((os.path.expanduser(pattern), password) for pattern, password in rules)

    @classmethod
    def read(cls, path: Path) -> PasswordBook:
        """The rules of a password file (see the module's doc); a line that is not a rule is a ConfigError that
        names its number, never its text."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the password file {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"the password file {path} is not UTF-8 text") from None
        rules = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            rule = _rule(line)
            if rule is None:
                raise ConfigError(
                    f"{path}, line {number}: expected a pattern, blanks, then the password (PATTERN PASSWORD)"
                )
            rules.append(rule)
        return cls(rules)

    @classmethod
    def for_files(cls, paths: Iterable[Path], password: str) -> PasswordBook:
        """One password for these files and no other (an upload's)."""
        return cls([(glob_escape(str(Path(path).resolve())), password) for path in paths])

    def for_path(self, path: str) -> tuple[str, ...]:
        """The passwords to try on the file at `path`, in order, each once."""
        if not self._rules:
            return ()  # the usual case, asked once per file a job loads: no path to resolve
        full = str(Path(path).resolve())
        name = os.path.basename(full)
        found: list[str] = []
        for pattern, password in self._rules:
            subject = full if "/" in pattern else name
            if fnmatch.fnmatchcase(subject, pattern) and password not in found:
                found.append(password)
        return tuple(found)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def __repr__(self) -> str:  # never the passwords
        return f"PasswordBook({len(self._rules)} rules)"

    def __reduce__(self) -> object:
        raise TypeError("a PasswordBook is not pickled: the worker tasks carry each file's passwords")


def _rule(line: str) -> tuple[str, str] | None:
    line = line.lstrip()
    if line.startswith('"'):
        end = line.find('"', 1)
        if end < 0:
            return None
        pattern, rest = line[1:end], line[end + 1 :]
        if rest and not rest[0].isspace():
            return None
    else:
        parts = line.split(None, 1)
        if len(parts) < 2:
            return None
        pattern, rest = parts[0], line[len(parts[0]) :]
    password = rest.lstrip(" \t")
    if not pattern or not password:
        return None
    return pattern, password


def glob_escape(text: str) -> str:
    """`text` as a pattern that matches only itself."""
    return "".join(f"[{ch}]" if ch in "*?[" else ch for ch in text)
