"""qpass: trained network -> integer-only C for microcontrollers."""

__version__ = "0.1.0"
