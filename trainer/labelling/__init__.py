"""The labelling page of ``trainer label``: session (frames, order, labels) and server."""
