"""textgen: character-level text generation with a hand-written LSTM cell.

Importing the package is cheap (no TensorFlow); the heavy modules import it lazily.
"""

__version__ = "0.1.0"
