"""spot: soft prompt tuning, transfer and a prompt library for frozen T5 models."""

__version__ = "0.1.0"
