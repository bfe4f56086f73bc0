"""Composing a values file into nodes: libyaml through PyYAML, and ruamel.yaml as reference.

Both composers produce the same node classes (PyYAML's ``ScalarNode``,
``MappingNode``, ``SequenceNode``, with marks that index the text), so what is
done with the nodes (:mod:`~watcher.gitops.values.read`,
:mod:`~watcher.gitops.values.edit`) does not depend on which one read the file.

libyaml is the composer: 20-40x faster than ruamel.yaml's pure-Python parser,
and that parse was nearly all of discovery's and write-back's time. ruamel.yaml
is the reference the tests compare it with (same blocks at the same marks), and
reads the few files libyaml reads differently: a byte order mark, which libyaml
does not count in its marks, and an anchor defined twice, which PyYAML refuses.
"""

from __future__ import annotations

import contextlib
import gc
import warnings
from collections.abc import Iterator
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml import nodes as ruamel_nodes
from ruamel.yaml.error import MarkedYAMLError as RuamelMarkedError
from ruamel.yaml.error import ReusedAnchorWarning
from ruamel.yaml.error import YAMLError as RuamelError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from watcher.gitops.values.scalars import Yaml11Resolver

Nodes = list[Node | None]

# An anchor defined again is valid YAML (the later one wins); ruamel would print a
# warning on stderr, where the daemon's log is JSON lines.
warnings.filterwarnings("ignore", category=ReusedAnchorWarning)

# Deeper than any values file is written; the text is refused beyond it. (libyaml
# stops at 1,000 levels; ruamel's recursion around 490.)
MAX_DEPTH = 400
TOO_DEEP = "the YAML nests too deeply to be read"


class ComposeError(Exception):
    """The text is not YAML that can be read: ``line`` (1-based) and what is wrong."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(problem)
        self.line = line
        self.problem = problem


try:
    from yaml._yaml import CParser

    LIBYAML = True
except ImportError:  # a PyYAML built without libyaml: ruamel reads everything, slower
    LIBYAML = False

if LIBYAML:

    class _Loader(CParser, Yaml11Resolver):
        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            Yaml11Resolver.__init__(self)

        def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
            # Values files repeat their scalars (keys above all): resolve each once.
            if kind is ScalarNode and implicit[0]:
                tag = _PLAIN.get(value)
                if tag is None:
                    resolved = Yaml11Resolver.resolve(self, kind, value, implicit)  # type: ignore[no-untyped-call]
                    tag = _PLAIN[value] = resolved
                    if len(_PLAIN) > _PLAIN_MAX:
                        _PLAIN.clear()
                return tag
            return Yaml11Resolver.resolve(self, kind, value, implicit)  # type: ignore[no-untyped-call]


# Plain scalar -> its tag; bounded, as a value is any text a file holds.
_PLAIN: dict[str, str] = {}
_PLAIN_MAX = 100_000


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a file's nodes are built.

    Nodes hold no cycles (they are freed by reference counting), yet building
    hundreds of thousands of them triggers collections that each walk every live
    object: a 20,000-block file took 4 s to compose instead of 0.7 s.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def compose(text: str) -> Nodes:
    """Every document's root node (None for an empty document); raises ComposeError."""
    if not LIBYAML or text.startswith("\ufeff"):
        return compose_reference(text)
    loader = _Loader(text)
    try:
        documents: Nodes = []
        with collector_paused():
            while loader.check_node():
                documents.append(loader.get_node())
        return documents or [None]
    except yaml.composer.ComposerError:
        # PyYAML's composer refuses an anchor defined twice, which YAML 1.2, go-yaml
        # and ruamel.yaml accept (the later one wins): let the reference decide.
        return compose_reference(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or str(exc).splitlines()[0]
        if "maximum nesting depth" in str(exc):
            problem = TOO_DEEP
        raise ComposeError(mark.line + 1 if mark else 1, problem) from None
    except yaml.YAMLError as exc:
        raise ComposeError(1, str(exc).splitlines()[0] if str(exc) else "unreadable") from None
    except RecursionError:
        raise ComposeError(1, TOO_DEEP) from None
    finally:
        loader.dispose()


class _Yaml11(YAML):
    """ruamel.yaml reading every document as YAML 1.1.

    Set once, ``YAML.version`` holds for the first document only: ruamel resets it at
    each document start, so later documents were read as YAML 1.2 (``off`` a string),
    unlike Helm. What a document's ``%YAML`` directive sets is still checked by ruamel
    itself (it refuses a version it does not know), then ignored.
    """

    @property
    def version(self) -> tuple[int, int]:
        return (1, 1)

    @version.setter
    def version(self, value: object) -> None:
        YAML.__dict__["version"].fset(self, value)


def compose_reference(text: str) -> Nodes:
    """The same, through ruamel.yaml's round-trip composer (YAML 1.1), as PyYAML nodes."""
    reader = _Yaml11(typ="rt")
    try:
        documents = list(reader.compose_all(text))
    except RecursionError:
        raise ComposeError(1, TOO_DEEP) from None
    except RuamelMarkedError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or str(exc).splitlines()[0]
        raise ComposeError(mark.line + 1 if mark else 1, problem) from None
    except RuamelError as exc:
        raise ComposeError(1, str(exc).splitlines()[0] if str(exc) else "unreadable") from None
    converted: dict[int, Node] = {}
    return [_convert(root, converted) if root is not None else None for root in documents]


def _mark(mark: Any) -> yaml.Mark:
    return yaml.Mark("<text>", mark.index, mark.line, mark.column, None, None)  # type: ignore[arg-type]


def _convert(root: Any, done: dict[int, Node]) -> Node:
    """A ruamel node graph as PyYAML nodes; shared nodes (aliases, even recursive ones)
    stay shared: every node is made first, then the collections are filled."""
    stack: list[Any] = [root]
    made: list[tuple[Any, Node]] = []
    while stack:
        node = stack.pop()
        if id(node) in done:
            continue
        tag = str(getattr(node.tag, "value", node.tag))
        start, end = _mark(node.start_mark), _mark(node.end_mark)
        converted: Node
        if isinstance(node, ruamel_nodes.ScalarNode):
            converted = ScalarNode(tag, node.value, start, end, node.style or "")
        elif isinstance(node, ruamel_nodes.SequenceNode):
            converted = SequenceNode(tag, [], start, end, bool(node.flow_style))
            stack.extend(node.value)
        else:
            converted = MappingNode(tag, [], start, end, bool(node.flow_style))
            stack.extend(child for pair in node.value for child in pair)
        done[id(node)] = converted
        made.append((node, converted))
    for node, converted in made:
        if isinstance(converted, SequenceNode):
            converted.value = [done[id(item)] for item in node.value]
        elif isinstance(converted, MappingNode):
            converted.value = [(done[id(k)], done[id(v)]) for k, v in node.value]
    return done[id(root)]
