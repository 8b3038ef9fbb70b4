"""The test suite: `python -m pytest` from the project root."""
