"""peftlab: a command-line lab for parameter-efficient fine-tuning research."""

__version__ = "0.1.0"
