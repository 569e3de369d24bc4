"""The package version, in its own module so that any part can record it without importing the package."""

__version__ = "0.1.0"
