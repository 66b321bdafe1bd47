"""Reading the files a user hands us, within bounds: text (a size cap, UTF-8 only), YAML and JSON.

Every failure raises the caller's ``HybridSearchError`` subclass with one line naming the file (and the line
where there is one) and what is allowed, never a traceback and never a hang:

* ``load_yaml`` reads YAML with ``yaml.safe_load``'s meaning (a ``SafeLoader`` subclass) and refuses
  what safe_load lets through: a key twice in one mapping (PyYAML keeps the last without a word), nesting
  deeper than ``MAX_YAML_DEPTH`` (PyYAML's recursive composer would crash), aliases that expand to more than
  ``MAX_YAML_NODES`` values or refer to themselves (a "billion laughs" bomb: a few lines that the checks
  would walk for hours), and files over ``MAX_YAML_BYTES`` (the pure-Python parser needs seconds per MB).
  Aliases within the limit keep working: a space may share a block with ``&name`` / ``*name``.
* ``load_json`` turns every ``json`` failure (syntax, nesting too deep for the decoder, integers over
  Python's digit limit, not UTF-8) into the same one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import yaml

from .errors import ConfigError, HybridSearchError

MAX_YAML_BYTES = 256 * 1024  # 50x the largest bundled space; parsing this much takes well under a second
MAX_YAML_DEPTH = 64  # a space nests 7 levels deep
MAX_YAML_NODES = 100_000  # values in the document with every alias expanded


class _Readable(Protocol):
    def open(self, mode: str = ...) -> Any: ...


def read_text(file: str | Path | _Readable, label: str | None = None, *, error: type[HybridSearchError],
              max_bytes: int | None = None, what: str = "file") -> str:
    """The UTF-8 text of ``file`` (a path or an ``importlib.resources`` file); at most ``max_bytes`` bytes."""
    label = str(file) if label is None else label
    path = Path(file) if isinstance(file, str) else file
    try:
        with path.open("rb") as fh:
            data = fh.read() if max_bytes is None else fh.read(max_bytes + 1)
    except IsADirectoryError:
        raise error(f"{label}: is a folder, not a {what}") from None
    except OSError as e:
        raise error(f"{label}: cannot read ({e.strerror or type(e).__name__})") from None
    if max_bytes is not None and len(data) > max_bytes:
        raise error(f"{label}: larger than {max_bytes:,} bytes, the limit for a {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{label}: not UTF-8 text (byte {e.start}: {e.reason}); a {what} must be UTF-8") from None


# -- YAML ----------------------------------------------------------------------------------------------------------
class _Refused(yaml.MarkedYAMLError):
    """A document safe_load would accept that we refuse; ``problem`` says why, ``problem_mark`` where."""


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse an alias graph that expands beyond MAX_YAML_NODES or contains itself. Iterative and memoised:
    linear in the document's written size however much the aliases would expand."""
    size: dict[int, int] = {}
    open_: set[int] = set()  # nodes whose children are being counted: the current path
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in _children(node))
            if size[key] > MAX_YAML_NODES:
                raise _Refused(None, None, f"aliases expand this document beyond {MAX_YAML_NODES:,} values; "
                                           "write the values out or share fewer", node.start_mark)
            continue
        if key in size:
            continue
        open_.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_:
                raise _Refused(None, None, "an alias refers to a node that contains it (recursive alias)",
                               child.start_mark)
            if id(child) not in size:
                stack.append((child, False))


class SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys, deep nesting and alias bombs (see the module doc)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> yaml.Node:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _Refused(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                               self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        if node is not None:
            _check_expansion(node)
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as e:  # an int over Python's digit limit, a 13th month, ...
            msg = "an integer longer than 4,300 digits" if "digits" in str(e) else f"{e}"
            raise _Refused(None, None, f"cannot read {node.tag.rsplit(':', 1)[-1]} value: {msg}",
                           node.start_mark) from None

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue  # a merge (<<) may override; complex keys are left to PyYAML
                key = self.construct_object(key_node)
                if key in first:
                    raise _Refused(None, None, f"duplicate key {_short(key)} (first at line "
                                               f"{first[key].line + 1}); a key may appear once in a mapping",
                                   key_node.start_mark)
                first[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def parse_yaml(text: str, label: str, *, error: type[HybridSearchError] = ConfigError) -> Any:
    """``yaml.safe_load(text)`` with the refusals of ``SafeLoader``; problems raise ``error`` naming ``label``."""
    loader = SafeLoader(text)
    try:
        return loader.get_single_data()
    except _Refused as e:
        raise error(f"{label}: {_where(e.problem_mark)}: {e.problem}") from None
    except yaml.MarkedYAMLError as e:
        at = f" ({_where(e.problem_mark)})" if e.problem_mark else ""
        why = " ".join(str(e.problem or e.context or "syntax error").split())
        raise error(f"{label}: malformed YAML{at}: {why}") from None
    except yaml.YAMLError as e:  # the reader: a control character, ...
        raise error(f"{label}: malformed YAML: {' '.join(str(e).split())}") from None
    except RecursionError:  # nesting is bounded above; kept so that nothing can escape as a traceback
        raise error(f"{label}: nested too deeply to read") from None
    except (ValueError, TypeError, OverflowError) as e:  # a constructor outside construct_object's guard
        raise error(f"{label}: cannot read YAML: {' '.join(str(e).split())}") from None
    finally:
        loader.dispose()


def load_yaml(file: str | Path | _Readable, label: str | None = None, *,
              error: type[HybridSearchError] = ConfigError, what: str = "YAML file",
              max_bytes: int = MAX_YAML_BYTES) -> Any:
    """Read and parse a YAML file (at most ``max_bytes``) as ``parse_yaml`` does."""
    label = str(file) if label is None else label
    return parse_yaml(read_text(file, label, error=error, max_bytes=max_bytes, what=what), label, error=error)


# -- JSON ----------------------------------------------------------------------------------------------------------
def load_json(file: str | Path, label: str | None = None, *, error: type[HybridSearchError],
              what: str = "JSON file", max_bytes: int | None = None) -> Any:
    """``json.loads`` of a UTF-8 file; every failure raises ``error`` naming the file (and line)."""
    label = str(file) if label is None else label
    text = read_text(file, label, error=error, max_bytes=max_bytes, what=what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{label}:{e.lineno}: invalid JSON (column {e.colno}): {e.msg}") from None
    except RecursionError:
        raise error(f"{label}: invalid {what}: nested too deeply to read") from None
    except ValueError as e:  # an integer longer than Python's digit limit
        why = "an integer longer than 4,300 digits" if "digits" in str(e) else " ".join(str(e).split())
        raise error(f"{label}: invalid {what}: {why}") from None
