"""Reading the small files that settings name (certificates, keys, passwords)."""

from __future__ import annotations

__all__ = ["read_setting_file"]


def read_setting_file(
    path: str, what: str, error: type[ValueError] = ValueError, limit: int | None = None
) -> bytes:
    """
    The content of ``path`` (at most ``limit`` bytes when given).

    :raises error: the file is missing, a directory or unreadable; the
        message starts with ``what`` and the path, e.g.
        ``TLS certificate file 'cert.pem' does not exist``.
    """
    try:
        with open(path, "rb") as f:
            return f.read() if limit is None else f.read(limit)
    except FileNotFoundError:
        raise error(f"{what} {path!r} does not exist") from None
    except IsADirectoryError:
        raise error(f"{what} {path!r} is a directory, not a file") from None
    except OSError as e:
        raise error(f"{what} {path!r} cannot be read: {e.strerror}") from None
