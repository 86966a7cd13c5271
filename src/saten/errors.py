"""Exceptions raised for bad user input."""


class ConfigError(ValueError):
    """A configuration value or input file is wrong; the message says which and how to fix it."""
