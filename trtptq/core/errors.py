"""User-facing errors: the CLI prints their message alone, with no traceback."""


class TrtptqError(Exception):
    """A mistake in what the user gave us (a file, an option, data), explained with the fix."""


class DataError(TrtptqError):
    """Calibration or evaluation data that does not fit the model."""


class ModelError(TrtptqError):
    """A model file that cannot be read, checked or written."""
