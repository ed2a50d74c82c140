"""Prompts every backend test continues, and a stop sequence picked from a completion."""

PROMPTS = [
    "def add(a, b):\n    return",
    "import os\n\n\nclass Config:\n    def __init__(self, path):\n        self.",
    "x = [",
]


def ascii_piece(text: str) -> str:
    """Two ASCII characters of `text`, from its middle if it has them there, for a stop sequence
    that it surely holds (random models' completions are mostly bytes that are no characters)."""
    middle = len(text) // 3
    starts = [*range(middle, len(text) - 1), *range(middle)]
    return next(text[i : i + 2] for i in starts if text[i : i + 2].isascii())
