"""The labelling page of ``trainer label``: session (frames, order, labels), server (HTTP) and
the page itself (``pages/label.html``, ``label.css``, ``label.js``, package data)."""
