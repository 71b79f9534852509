"""The package version, in a module of its own so the API and the report read it without importing the package."""

__version__ = "0.1.0"
