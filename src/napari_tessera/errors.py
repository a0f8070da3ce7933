"""Exceptions for problems a user can fix. The CLI turns them into one line and exit code 2;
the widgets into a napari notification."""


class TesseraError(Exception):
    """A problem with the user's input, files or settings (not a bug)."""


class InputError(TesseraError, ValueError):
    """An image, labels array or argument that cannot be used as given."""


class ConfigError(TesseraError, ValueError):
    """A model configuration with wrong types or values out of range."""


class ModelFileError(TesseraError):
    """A model file that is missing, corrupt, unsafe (pickle) or does not match its config."""


class MissingExtra(TesseraError, ImportError):
    """An optional dependency that is not installed (the message says how to install it)."""
