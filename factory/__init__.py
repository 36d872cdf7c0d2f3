"""Constitution Factory: training data from AI feedback."""

__version__ = "0.1.0"
