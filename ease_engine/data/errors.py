"""Errors raised for bad input data: each message names the file and line at fault."""


class DataError(ValueError):
    """Input data is missing, unreadable or inconsistent; the message says where and what to do."""
