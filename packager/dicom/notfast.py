"""The fast reader's two signals, shared by its compiled and its pure-Python core (``dicom.walk``).

They live apart from the core so that both builds of it raise the same classes.
"""


class NotFast(Exception):
    """The fast reader does not cover this file exactly: read it with ``read_dataset``."""


class Short(Exception):
    """The buffer ended inside the header: read more of the file (or it is truncated)."""
