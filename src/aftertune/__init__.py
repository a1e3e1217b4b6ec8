"""aftertune: fine-tune a language model, then show with paired statistics what the fine-tune broke."""

__version__ = "0.1.0"
