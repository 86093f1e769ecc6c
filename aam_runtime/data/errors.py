"""The one error a problem with the user's data raises (table, metadata, tree, archive)."""


class DataError(Exception):
    """A problem with the user's data, phrased for the user (file, what, how to fix)."""
