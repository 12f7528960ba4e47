"""EditThinker Factory: build, train, evaluate and promote a Think-while-Edit thinker."""

__version__ = "0.1.0"
