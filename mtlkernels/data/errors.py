"""The one error type of the data path."""
from __future__ import annotations


class DataError(ValueError):
    """A file, frame or schema that cannot be used as it is. The message names the column (and
    a row where it helps) and says what was expected; the CLI prints it as one line."""
