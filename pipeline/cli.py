"""Command-line commands of this package (placeholder until implemented)."""


def register(subparsers) -> None:
    pass
