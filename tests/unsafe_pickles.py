"""A pickle payload for the safe-loading tests (imported by the weights and training tests; ``tests/`` is on
``sys.path`` through its conftest)."""


class CreatesFile:
    """Unpickling this calls ``open(path, 'w')``: the file exists afterwards iff the pickle ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, 'w'))
