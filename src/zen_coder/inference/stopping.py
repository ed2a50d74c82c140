"""Where a streamed completion ends: stop sequences, and the line rules editors expect.

An editor shows a completion at the cursor. It wants one line when the cursor sits in the middle
of a line, and otherwise a block that ends where the code around the cursor ends: a line
indented less than the block ("auto"), or a line that repeats what already follows the cursor
(the suffix's next line, which the model would otherwise write a second time). Every backend
streams text through a `TextCutter`, which emits text only once no rule can still take it back:
a tail that might begin a stop sequence, and lines after the first until they are complete.
"""

from __future__ import annotations

from dataclasses import dataclass

from zen_coder.errors import ZenCoderError

MULTILINE = ("single", "multi", "auto")
# Lines that open a block: the completion after them is the block's body, indented deeper.
BLOCK_OPENERS = (":", "{", "(", "[")


@dataclass(frozen=True)
class CutOff:
    """How a completion ends, besides its token limit and the model's end of text.

    `multiline`: "single" ends at the first line break after some text; "multi" keeps every
    line; "auto" is single when text follows the cursor on its line (the suffix's first line is
    not blank), else multi with the indentation rule. `indent`: a line after the first that is
    indented by fewer characters ends the completion (llama.cpp's `n_indent`); with "auto" and no
    value, it is derived from the prefix's last line. `suffix`: the text after the cursor; a line
    after the first that repeats its next non-blank line ends the completion ("multi" and
    "auto").
    """

    stop: tuple[str, ...] = ()
    multiline: str = "auto"
    indent: int | None = None
    suffix: str = ""

    def __post_init__(self) -> None:
        if self.multiline not in MULTILINE:
            raise ZenCoderError(
                f"multiline {self.multiline!r} is not one of {', '.join(MULTILINE)}"
            )


@dataclass(frozen=True)
class LineRules:
    """The line rules one completion follows, resolved from a `CutOff` and the prefix."""

    single: bool
    indent: int | None  # lines after the first indented less than this end it
    repeated: str | None  # a line after the first equal to this (stripped) ends it


def line_rules(cutoff: CutOff, prefix: str) -> LineRules:
    """Resolve "auto" against the cursor's surroundings."""
    repeated = next((line.strip() for line in cutoff.suffix.split("\n") if line.strip()), None)
    if cutoff.multiline == "single":
        return LineRules(single=True, indent=None, repeated=None)
    if cutoff.multiline == "multi":
        return LineRules(single=False, indent=cutoff.indent, repeated=repeated)
    if cutoff.suffix.split("\n", 1)[0].strip():
        return LineRules(single=True, indent=None, repeated=None)
    indent = cutoff.indent if cutoff.indent is not None else block_indent(prefix)
    return LineRules(single=False, indent=indent, repeated=repeated)


def block_indent(prefix: str) -> int:
    """The least indentation a line of the completion may have and still belong to the block at
    the cursor: the cursor line's own, or one more after a line that opens a block (so that,
    after `def f():`, the next `def` ends the completion)."""
    line = prefix.rsplit("\n", 1)[-1]
    indent = indentation(line)
    return indent + 1 if line.rstrip().endswith(BLOCK_OPENERS) else indent


def indentation(line: str) -> int:
    """Leading whitespace characters (a tab counts as one, as llama.cpp's n_indent counts)."""
    return len(line) - len(line.lstrip(" \t"))


class TextCutter:
    """Streaming cut-off: `push` each decoded delta, get back the text safe to show now.

    Text is held back while a rule could still remove it: the longest tail that is the start of
    a stop sequence, and (multi-line) a line after the first until it is complete, since its
    indentation or its likeness to the suffix decides whether it is kept. Once a rule fires,
    `done` is true, `reason` is "stop", and the text before the cut has all been returned.
    """

    def __init__(self, cutoff: CutOff, prefix: str = "") -> None:
        self.stop = tuple(sequence for sequence in cutoff.stop if sequence)
        self.rules = line_rules(cutoff, prefix)
        self.text = ""  # everything pushed
        self.emitted = 0  # characters of `text` returned so far
        self.done = False
        self.reason: str | None = None

    def push(self, delta: str) -> str:
        """Add `delta`; return the newly safe text ("" once done)."""
        if self.done:
            return ""
        self.text += delta
        return self._advance(final=False)

    def flush(self) -> str:
        """The end of the completion: what is still held back, with the rules applied to the
        last line as a complete one."""
        if self.done:
            return ""
        text = self._advance(final=True)
        self.done = True
        return text

    def _advance(self, final: bool) -> str:
        cut = self._cut(final)
        if cut is not None:
            self.done, self.reason = True, "stop"
            end = cut
        elif final:
            end = len(self.text)
        else:
            end = min(self._stop_safe(), self._lines_safe())
        piece = self.text[self.emitted : max(end, self.emitted)]
        self.emitted = max(end, self.emitted)
        return piece

    def _cut(self, final: bool) -> int | None:
        """Where the text must end, if a rule already says so."""
        cuts = [index for index in (self.text.find(s) for s in self.stop) if index >= 0]
        line_cut = self._line_cut(final)
        if line_cut is not None:
            cuts.append(line_cut)
        return min(cuts) if cuts else None

    def _line_cut(self, final: bool) -> int | None:
        text, rules = self.text, self.rules
        if rules.single:
            first = text.find("\n", len(text) - len(text.lstrip()))
            return first if text.strip() and first >= 0 else None
        if rules.indent is None and rules.repeated is None:
            return None
        kept_end = 0  # the end of the last line kept with text: a cut ends the text there
        start = 0
        for number, line in enumerate(text.split("\n")):
            end = start + len(line)
            if number == 0:
                kept_end = end
            elif line.strip():
                if end == len(text) and not final:
                    break  # incomplete: its end may still change the verdict
                if self._ends_here(line):
                    return kept_end
                kept_end = end
            start = end + 1
        return None

    def _ends_here(self, line: str) -> bool:
        rules = self.rules
        if rules.indent is not None and indentation(line) < rules.indent:
            return True
        return rules.repeated is not None and line.strip() == rules.repeated

    def _stop_safe(self) -> int:
        """The start of the longest tail that could still grow into a stop sequence."""
        text = self.text
        longest = max((len(s) for s in self.stop), default=0)
        for start in range(max(self.emitted, len(text) - longest + 1), len(text)):
            tail = text[start:]
            if any(sequence.startswith(tail) for sequence in self.stop):
                return start
        return len(text)

    def _lines_safe(self) -> int:
        """With multi-line rules, text after the first line break waits until the line that
        follows it is complete and kept (a cut removes the break before the line it drops)."""
        rules = self.rules
        if rules.single or (rules.indent is None and rules.repeated is None):
            return len(self.text)
        first_break = self.text.find("\n")
        if first_break < 0:
            return len(self.text)
        last_break = self.text.rfind("\n")
        # Every line before the last break is complete and was kept (else _cut fired); the
        # line after it may still be dropped, and with it the break and any blank lines.
        kept = self.text[:last_break].rstrip("\n \t")
        return max(len(kept), first_break)
