"""HDF5 compression by name: one list for the writer, the simulator and the benches.

The filters other than gzip and lzf come from hdf5plugin; readers of such files need
``import hdf5plugin`` (hitstream's readers do it for them).
"""

from __future__ import annotations

from typing import Any

from hitstream.errors import ConfigError

#: Names accepted wherever a compression is chosen (``output.compression``, ``--compression``).
COMPRESSIONS: tuple[str, ...] = ("bitshuffle-lz4", "lz4", "zstd", "gzip", "lzf", "none")


def compression_options(name: str) -> dict[str, Any]:
    """Keyword arguments of ``create_dataset`` for a name of :data:`COMPRESSIONS`."""
    if name == "bitshuffle-lz4":
        import hdf5plugin

        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    if name == "lz4":
        import hdf5plugin

        return dict(hdf5plugin.LZ4())
    if name == "zstd":
        import hdf5plugin

        return dict(hdf5plugin.Zstd())
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 1, "shuffle": True}
    if name == "lzf":
        return {"compression": "lzf", "shuffle": True}
    if name == "none":
        return {}
    raise ConfigError(f"compression {name!r}: choose one of {', '.join(COMPRESSIONS)}")
