"""One generic loader that turns the JSON configuration files into attrs objects, and back.

A configuration class (:func:`config_class`) declares each key once with :func:`setting`:
the :class:`Kind` of its value (how it looks in JSON and on the command line, which
values are allowed, what it becomes in Python) and its default as written in the file.
Everything else -- reading, defaults, unknown keys, relative paths, command-line
overrides, writing -- is done here by walking the attrs fields, never per key.

Every problem becomes one :class:`ConfigError` line naming the file (or the option) and
the dotted key, because that line is all an operator sees when a daemon refuses to start.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast, dataclass_transform

import attrs

T = TypeVar("T")
C = TypeVar("C")

_KIND = "dfs.config.kind"


class ConfigError(Exception):
    """A configuration problem, told in one line: file or option, key, expected, got."""

    def __init__(
        self,
        file: str,
        key: str,
        expected: str,
        got: str | None = None,
        *,
        problem: str | None = None,
    ) -> None:
        super().__init__(file, key, expected, got)
        self.file = file  # a path, or an option name such as "--listen"
        self.key = key  # dotted ("tls.ca", "metaservers[1]"); "" for the whole file or option
        self.expected = expected
        self.got = got  # repr of the bad value, or None
        self.problem = problem  # replaces "expected ..., got ..." when that reads badly

    def __str__(self) -> str:
        where = f"option {self.file}" if self.file.startswith("-") else self.file
        if self.problem is not None:
            return f"{where}: {self.problem}"
        at = f"key '{self.key}': " if self.key else ""
        got = "" if self.got is None else f", got {self.got}"
        return f"{where}: {at}expected {self.expected}{got}"


class InvalidValueError(ValueError):
    """A value broke its rule; raised by kinds and cross-field checks, caught by the loader.

    ``key`` starts empty at the value that failed and grows as the error travels up
    through lists and sections, so the loader can name the full path.
    """

    def __init__(self, expected: str, got: object, key: str = "") -> None:
        super().__init__(expected, got, key)
        self.expected = expected
        self.got = got
        self.key = key

    def under(self, name: str) -> InvalidValueError:
        if not self.key:
            self.key = name
        elif self.key.startswith("["):
            self.key = name + self.key
        else:
            self.key = f"{name}.{self.key}"
        return self

    def __str__(self) -> str:
        return str(_as_config_error("<config>", self))


class UnknownKeyError(InvalidValueError):
    """A key the section does not declare: usually a typo, so we suggest the closest."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__("one of " + ", ".join(known), name, name)
        self.known = known


class Kind(Protocol):
    """How one kind of value travels between JSON, command-line text and Python."""

    @property
    def expected(self) -> str: ...

    def parse(self, value: object, base: Path | None) -> Any:
        """Check a JSON value and convert it; relative paths resolve against ``base``."""

    def dump(self, value: Any) -> object:
        """The JSON value that parses back to ``value``."""

    def from_text(self, text: str) -> object:
        """Best-effort JSON value for command-line text; ``parse`` then judges it."""


@attrs.frozen
class Number:
    """An integer or a float within bounds. JSON true/false are not numbers."""

    integer: bool = False
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    multiple_of: int | None = None

    @property
    def expected(self) -> str:
        bounds = (("> ", self.gt), (">= ", self.ge), ("< ", self.lt), ("<= ", self.le))
        rules = [f"{op}{bound}" for op, bound in bounds if bound is not None]
        if self.multiple_of is not None:
            rules.append(f"a multiple of {self.multiple_of}")
        noun = "an integer" if self.integer else "a number"
        return f"{noun} {' and '.join(rules)}" if rules else noun

    def parse(self, value: object, base: Path | None) -> int | float:
        # bool is a subclass of int in Python, but "true" is never a sensible count.
        allowed = int if self.integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise InvalidValueError(self.expected, value)
        try:
            number = value if self.integer else float(value)
        except OverflowError:
            raise InvalidValueError(self.expected, value) from None
        if isinstance(number, float) and not math.isfinite(number):
            raise InvalidValueError(self.expected, value)  # json accepts NaN and Infinity
        if not (
            (self.gt is None or number > self.gt)
            and (self.ge is None or number >= self.ge)
            and (self.lt is None or number < self.lt)
            and (self.le is None or number <= self.le)
            and (self.multiple_of is None or number % self.multiple_of == 0)
        ):
            raise InvalidValueError(self.expected, value)
        return number

    def dump(self, value: Any) -> object:
        return value

    def from_text(self, text: str) -> object:
        for convert in (int, float):
            try:
                return convert(text)
            except ValueError:
                pass
        return text


@attrs.frozen
class Flag:
    """JSON true or false (on the command line also yes/no, on/off, 1/0)."""

    expected = "true or false"

    def parse(self, value: object, base: Path | None) -> bool:
        if not isinstance(value, bool):
            raise InvalidValueError(self.expected, value)
        return value

    def dump(self, value: Any) -> object:
        return value

    def from_text(self, text: str) -> object:
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        return text


@attrs.frozen
class Parsed:
    """A JSON string turned into a value by ``convert`` (which raises ValueError)."""

    expected: str
    convert: Callable[[str], Any]
    render: Callable[[Any], str] = str

    def parse(self, value: object, base: Path | None) -> Any:
        if not isinstance(value, str):
            raise InvalidValueError(self.expected, value)
        try:
            return self.convert(value)
        except ValueError:
            raise InvalidValueError(self.expected, value) from None

    def dump(self, value: Any) -> object:
        return self.render(value)

    def from_text(self, text: str) -> object:
        return text


@attrs.frozen
class FilePath:
    """A path; a relative one is taken relative to ``base`` (the config file's folder)."""

    expected: str = "a path"

    def parse(self, value: object, base: Path | None) -> Path:
        if not isinstance(value, str) or not value or "\0" in value:
            raise InvalidValueError(self.expected, value)
        # Without a base (defaults declared in code) a relative path stays relative.
        return Path(value) if base is None else Path(os.path.normpath(base / value))

    def dump(self, value: Any) -> object:
        return str(value)

    def from_text(self, text: str) -> object:
        return text


@attrs.frozen
class Nullable:
    """The inner kind, or null (on the command line: an empty text or "null")."""

    inner: Kind

    @property
    def expected(self) -> str:
        return f"{self.inner.expected} or null"

    def parse(self, value: object, base: Path | None) -> Any:
        if value is None:
            return None
        try:
            return self.inner.parse(value, base)
        except InvalidValueError as error:
            if error.key:
                raise
            raise InvalidValueError(self.expected, value) from None

    def dump(self, value: Any) -> object:
        return None if value is None else self.inner.dump(value)

    def from_text(self, text: str) -> object:
        return None if text.strip() in ("", "null") else self.inner.from_text(text)


@attrs.frozen
class ListOf:
    """A JSON list of the item kind, kept as a tuple; comma-separated on the command line."""

    item: Kind
    non_empty: bool = False
    unique: bool = False

    @property
    def expected(self) -> str:
        text = f"a {'non-empty ' if self.non_empty else ''}list of {self.item.expected}"
        return text + (" without duplicates" if self.unique else "")

    def parse(self, value: object, base: Path | None) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise InvalidValueError(self.expected, value)
        items = []
        for index, raw in enumerate(value):
            try:
                items.append(self.item.parse(raw, base))
            except InvalidValueError as error:
                raise error.under(f"[{index}]") from None
        if (self.non_empty and not items) or (self.unique and len(set(items)) < len(items)):
            raise InvalidValueError(self.expected, value)
        return tuple(items)

    def dump(self, value: Any) -> object:
        return [self.item.dump(item) for item in value]

    def from_text(self, text: str) -> object:
        return [self.item.from_text(part.strip()) for part in text.split(",")] if text else []


@attrs.frozen
class Section:
    """A JSON object whose keys are the settings of a config class."""

    cls: type

    @property
    def expected(self) -> str:
        return "a JSON object"

    def parse(self, value: object, base: Path | None) -> Any:
        if not isinstance(value, dict):
            raise InvalidValueError(self.expected, value)
        declared = _settings(self.cls)
        for name in value:
            if name not in declared:
                raise UnknownKeyError(name, list(declared))
        kwargs = {}
        for name, field in declared.items():
            kind: Kind = field.metadata[_KIND]
            default = attrs.NOTHING if field.default is attrs.NOTHING else kind.dump(field.default)
            raw = value.get(name, default)
            if raw is attrs.NOTHING:
                raise InvalidValueError(f"{kind.expected} (the key is required)", raw, name)
            if isinstance(raw, dict) and isinstance(default, dict):
                raw = default | raw  # a section given in part keeps the defaults of the rest
            try:
                kwargs[name] = kind.parse(raw, base)
            except InvalidValueError as error:
                raise error.under(name) from None
        return self.cls(**kwargs)  # cross-field checks in __attrs_post_init__ raise here

    def dump(self, value: Any) -> object:
        return {
            name: field.metadata[_KIND].dump(getattr(value, name))
            for name, field in _settings(self.cls).items()
        }

    def from_text(self, text: str) -> object:
        return text


def setting(kind: Kind, *, default: object = attrs.NOTHING) -> Any:
    """Declare one key of a config class; ``default`` is written as in the JSON file."""
    return attrs.field(
        default=attrs.NOTHING if default is attrs.NOTHING else kind.parse(default, None),
        converter=tuple if isinstance(kind, ListOf) else None,  # lists passed in code too
        metadata={_KIND: kind},
    )


@dataclass_transform(frozen_default=True, field_specifiers=(attrs.field, setting))
def config_class(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen attrs class whose :func:`setting` fields the loader walks.

    Plain ``@attrs.frozen`` would do at run time; dataclass_transform tells type
    checkers and linters that :func:`setting` declares a field, as ``attrs.field`` does.
    """
    return attrs.frozen(cls)


@config_class
class ConfigFile:
    """Base of the classes loaded from a whole file: remembers which file."""

    source: Path | None = attrs.field(default=None, kw_only=True, eq=False, repr=False)


F = TypeVar("F", bound=ConfigFile)


def load_config(cls: type[F], path: str | Path) -> F:
    """Read, check and convert one JSON file; raise ConfigError on any problem."""
    file = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(file, "", "an existing file", problem="not found") from None
    except json.JSONDecodeError as error:
        where = f"line {error.lineno} column {error.colno}"
        raise ConfigError(
            file, "", "JSON", problem=f"{where}: invalid JSON ({error.msg})"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(file, "", "UTF-8 text", problem="invalid JSON (not UTF-8 text)") from None
    except OSError as error:
        raise ConfigError(
            file, "", "a readable file", problem=f"cannot be read ({error.strerror})"
        ) from None
    except ValueError as error:  # e.g. an integer too long for int(); no position given
        raise ConfigError(file, "", "JSON", problem=f"invalid JSON ({error})") from None
    source = Path(os.path.abspath(path))
    try:
        config = Section(cls).parse(data, source.parent)
    except InvalidValueError as error:
        raise _as_config_error(file, error) from None
    return cast(F, attrs.evolve(config, source=source))


def override(config: C, key: str, text: str, option: str) -> C:
    """A copy of ``config`` with ``key`` (dotted for sections) set from an option's text.

    The text is checked by the same rules as the file; a relative path is taken
    relative to the current directory, as any path typed on a command line.
    """
    name, _, rest = key.partition(".")
    field = _settings(type(config)).get(name)
    if field is None:
        raise KeyError(f"{type(config).__name__} has no key {key!r}")
    if rest:
        value = override(getattr(config, name), rest, text, option)
    else:
        kind: Kind = field.metadata[_KIND]
        try:
            value = kind.parse(kind.from_text(text), Path.cwd())
        except InvalidValueError as error:
            # A list item names itself; otherwise show the text exactly as typed.
            got = _show(error.got if error.key else text)
            raise ConfigError(option, "", error.expected, got) from None
    try:
        return cast(C, attrs.evolve(cast(Any, config), **{name: value}))
    except InvalidValueError as error:  # a cross-field check, which may blame another key
        if error.key == name:
            raise ConfigError(option, "", error.expected, _show(text)) from None
        raise ConfigError(option, error.key, error.expected, _show(error.got)) from None


def to_json(config: Any) -> dict[str, Any]:
    """The JSON object for ``config``, every key present, as :func:`write_config` writes."""
    data: dict[str, Any] = Section(type(config)).dump(config)  # type: ignore[assignment]
    return data


def write_config(config: Any, path: str | Path) -> None:
    """Write ``config`` as a JSON file that loads back equal; atomically, mode 0644.

    Relative paths are written as they are, so they resolve against the new file's folder.
    """
    text = json.dumps(to_json(config), indent=2, ensure_ascii=False) + "\n"
    target = Path(path)
    # A reader (a starting daemon) must never see half a file: write aside, then rename.
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _settings(cls: type) -> dict[str, attrs.Attribute[Any]]:
    return {field.name: field for field in attrs.fields(cls) if _KIND in field.metadata}


def _as_config_error(file: str, error: InvalidValueError) -> ConfigError:
    if not isinstance(error, UnknownKeyError):
        got = None if error.got is attrs.NOTHING else _show(error.got)  # NOTHING: key missing
        return ConfigError(file, error.key, error.expected, got)
    name = str(error.got)
    section = error.key[: len(error.key) - len(name)]  # "tls." or ""
    hint = ""
    # An abbreviation ("cert") is the likeliest slip; difflib catches the typos.
    close = [key for key in error.known if name and (key.startswith(name) or name.startswith(key))]
    close = close or difflib.get_close_matches(name, error.known, n=1)
    if close:
        hint = f"did you mean '{section}{close[0]}'? "
    problem = f"unknown key '{error.key}' ({hint}known keys: {', '.join(error.known)})"
    return ConfigError(file, error.key, error.expected, repr(name), problem=problem)


def _show(value: object, limit: int = 80) -> str:
    # repr keeps the message on one line (newlines are escaped); long values are cut.
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
