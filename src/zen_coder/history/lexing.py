"""Pygments' regular-expression lexers run one rule match at a time, with their state in view.

The formatting-only check compares two versions of a file token by token, and most such pairs
differ in a few lines of a long file. Once both lexers are in the same state with the same text
left to lex, the rest of their tokens are the same, so the comparison can stop there instead of
lexing both files to their ends. Pygments keeps a lexer's state (its stack of states) inside
`RegexLexer.get_tokens_unprocessed`; `steps` is that loop, rule for rule, with the stack kept in
a list the caller can read.

The claim "same state and same text left, same tokens" holds for what `steps` accepts:

- each rule's regular expression matches at a position from there on, reading before it only as
  far as its lookbehinds and `\\b`, `^` (`context_before` bounds that from the parsed patterns),
  and no rule anchors at the start of the text once past it;
- each rule's action is a token type, `bygroups` of such actions, or `using` another lexer on
  the matched text: all functions of the match alone.

Lexers that override the loop (C, C++, Ruby, PHP, ...) or whose actions are their own methods
(which may keep state on the lexer) are not `steppable` and are lexed whole.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pygments.lexer import ExtendedRegexLexer, RegexLexer
from pygments.token import Error, Whitespace, _TokenType

if TYPE_CHECKING:
    from pygments.lexer import Lexer

# What a rule's action may be, by the name of the function Pygments builds for it.
_BYGROUPS = "bygroups.<locals>.callback"
_USING = "using.<locals>.callback"


def steppable(lexer: Lexer) -> bool:
    """Whether `steps` lexes exactly as `lexer.get_tokens` does, and its state decides the rest."""
    return _steppable(type(lexer)) and not lexer.filters and context_before(lexer) is not None


@functools.cache
def _steppable(kind: type) -> bool:
    return (
        issubclass(kind, RegexLexer)
        and not issubclass(kind, ExtendedRegexLexer)
        and kind.get_tokens_unprocessed is RegexLexer.get_tokens_unprocessed
        and hasattr(kind, "_preprocess_lexer_input")
    )


def preprocess(lexer: Lexer, text: str) -> str:
    """The text as `lexer.get_tokens` lexes it: line endings, stripped newlines, a final one."""
    return lexer._preprocess_lexer_input(text)


def steps(lexer: Lexer, text: str, stack: list[str]) -> Iterator[tuple[int, list]]:
    """`RegexLexer.get_tokens_unprocessed(text)` one rule match at a time: after each, the position
    reached and the (token type, value) pairs of the match. `stack` (start it as ["root"]) is the
    lexer's state, kept current in place."""
    tokendefs = lexer._tokens
    rules = tokendefs[stack[-1]]
    pos = 0
    end = len(text)
    while True:
        for rexmatch, action, new_state in rules:
            match = rexmatch(text, pos)
            if match:
                if action is None:
                    tokens = []
                elif type(action) is _TokenType:
                    tokens = [(action, match.group())]
                else:
                    tokens = [(kind, value) for _, kind, value in action(lexer, match)]
                pos = match.end()
                if new_state is not None:
                    _transition(stack, new_state)
                    rules = tokendefs[stack[-1]]
                break
        else:
            if pos >= end:
                return
            if text[pos] == "\n":  # no rule matched at the end of a line: back to the root
                stack[:] = ["root"]
                rules = tokendefs["root"]
                tokens = [(Whitespace, "\n")]
            else:
                tokens = [(Error, text[pos])]
            pos += 1
        yield pos, tokens


def _transition(stack: list[str], new_state: tuple | int | str) -> None:
    """Apply a rule's state change to the stack, as RegexLexer does."""
    if isinstance(new_state, tuple):
        for state in new_state:
            if state == "#pop":
                if len(stack) > 1:
                    stack.pop()
            elif state == "#push":
                stack.append(stack[-1])
            else:
                stack.append(state)
    elif isinstance(new_state, int):
        # Pop, but keep at least one state on the stack.
        if abs(new_state) >= len(stack):
            del stack[1:]
        else:
            del stack[new_state:]
    elif new_state == "#push":
        stack.append(stack[-1])
    else:
        raise ValueError(f"unknown Pygments state change {new_state!r}")


def context_before(lexer: Lexer) -> int | None:
    """How many characters before a position a rule may read when it matches there (at least 1);
    None if some rule is not a function of the text from there (see the module docstring).

    Worked out once per set of rules (a lexer class has one), which every instance shares.
    """
    tokendefs = lexer._tokens
    known = _CONTEXTS.get(id(tokendefs))
    if known is None or known[0] is not tokendefs:
        known = (tokendefs, _rules_context(tokendefs))
        _CONTEXTS[id(tokendefs)] = known
    return known[1]


# id of a lexer's rules -> the rules (kept, so that the id is not reused) and their context.
_CONTEXTS: dict[int, tuple[dict, int | None]] = {}


def _rules_context(tokendefs: dict) -> int | None:
    before = 1  # `\b`, `^` and `\B` read the character before
    for rules in tokendefs.values():
        for rexmatch, action, _ in rules:
            if not _is_function_of_match(action):
                return None
            # Only a lookbehind, `(?<=` or `(?<!`, reads further back; most patterns have none,
            # and parsing one is slow.
            pattern = rexmatch.__self__
            reach = _lookbehind(pattern) if "(?<" in pattern.pattern else 0
            if reach is None:
                return None
            before = max(before, reach)
    return before


def _is_function_of_match(action: object) -> bool:
    if action is None or type(action) is _TokenType:
        return True
    name = getattr(action, "__qualname__", "")
    if name == _USING:
        return True
    if name != _BYGROUPS:
        return False
    cells = dict(
        zip(action.__code__.co_freevars, (c.cell_contents for c in action.__closure__), strict=True)
    )
    return all(_is_function_of_match(inner) for inner in cells.get("args", (object(),)))


def _lookbehind(pattern: re.Pattern) -> int | None:
    """The widest lookbehind of a compiled pattern (0 if none); None if unbounded or unknown."""
    from re import _constants, _parser  # the regular-expression parser, as `re` itself uses it

    widest = 0
    pending = [_parser.parse(pattern.pattern, pattern.flags)]
    while pending:
        for op, argument in pending.pop():
            if op in (_constants.ASSERT, _constants.ASSERT_NOT):
                direction, inner = argument
                if direction < 0:
                    width = inner.getwidth()[1]
                    if width >= _constants.MAXREPEAT:
                        return None
                    widest = max(widest, width)
                pending.append(inner)
            elif op is _constants.BRANCH:
                pending.extend(argument[1])
            elif op is _constants.SUBPATTERN:
                pending.append(argument[-1])
            elif op in (
                _constants.MAX_REPEAT,
                _constants.MIN_REPEAT,
                _constants.POSSESSIVE_REPEAT,
            ):
                pending.append(argument[2])
            elif op is _constants.ATOMIC_GROUP:
                pending.append(argument)
            elif op is _constants.GROUPREF_EXISTS:
                pending.extend(branch for branch in argument[1:] if branch is not None)
    return widest
