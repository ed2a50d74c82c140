"""zen-coder: a code model that learns a codebase's conventions from its git history."""

__version__ = "0.1.0"
