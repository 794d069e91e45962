"""Domain exceptions: one base class, messages that say where to look."""


class HitstreamError(Exception):
    """Base class of every error hitstream raises on purpose."""


class BundleError(HitstreamError):
    """A model bundle is missing, incomplete, corrupted or incompatible."""


class ConfigError(HitstreamError):
    """A configuration file or option is invalid."""


class MessageError(HitstreamError):
    """A stream message is malformed; ``reason`` is a short metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class InputDataError(HitstreamError):
    """An input HDF5 file, dataset or labels file is unusable."""


class OutputError(HitstreamError):
    """An output file cannot be written as asked (name clash, shape or class mismatch)."""


class DiskFullError(OutputError):
    """Free space in the output directory fell below the configured minimum."""
