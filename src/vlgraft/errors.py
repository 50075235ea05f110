"""One exception type for everything a user can get wrong.

The CLI prints ``VlgraftError`` as a single line (no traceback); messages name the file, record or
key at fault so the user can fix the input without reading our code.
"""


class VlgraftError(Exception):
    """A user-facing error: bad input, unknown name, misspelt key, missing file."""


class DataError(VlgraftError):
    """A record, file or image in a dataset is unusable."""


class ConfigError(VlgraftError):
    """A recipe or override is invalid."""
