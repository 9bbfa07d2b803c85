"""The package version, in its own module so nothing inside genaug imports the package root."""

__version__ = "0.1.0"
