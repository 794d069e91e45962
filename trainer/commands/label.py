"""``trainer label``: label frames by eye in a web page, saved as you click.

Serves a grid of frame pictures on localhost, ordered by template distance (clean singles
first), by the model's uncertainty or by index; a button per class under each picture,
and keys (arrows, 1..4, 0, n/p). Every change is written to the labels file at once;
restarting on the same file resumes where it stopped. With a ``--model`` bundle that can be
fine-tuned, every ``--refit-every`` labels (and on the page's button) the model is refitted
on the labels so far in the background (:mod:`trainer.labelling.refit`): new guesses, the
unlabelled frames ordered again, and the held-out accuracy on the page. See
:mod:`trainer.labelling.session` (frames, order, labels) and
:mod:`trainer.labelling.server` (the page and its HTTP API).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hitstream.cli import add_option
from trainer.commands.args import add_photon_unit
from trainer.labelling.session import ORDERS

HELP = "label frames by eye in a web page (thumbnails, click or keys; saved on every change)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from trainer.labelling.refit import RefitConfig
    from trainer.labelling.server import LabelServer
    from trainer.labelling.session import open_session

    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="HDF5/CXI run file(s)")
    p.add_argument("--dataset", required=True, help="path of the (N, H, W) frames dataset")
    add_photon_unit(p, open_session)
    p.add_argument(
        "--labels",
        type=Path,
        required=True,
        help="labels file to write, resumed if it exists (.csv, .json or .h5)",
    )
    p.add_argument("--model", type=Path, help="model bundle: guesses, uncertainty, its bank")
    p.add_argument("--bank", type=Path, help="template bank [the --model bundle's templates.h5]")
    p.add_argument(
        "--order",
        choices=ORDERS,
        help="frame order [template with a bank, else uncertainty with a model, else index]",
    )
    add_option(p, open_session, "classes", "classes, comma-separated; keys 1..9 in this order")
    add_option(p, open_session, "page_size", "frames per page")
    add_option(
        p, open_session, "crop", "pictures show the central CROP x CROP pixels; 0: whole frames"
    )
    add_option(p, LabelServer, "host", "address to serve on")
    add_option(p, LabelServer, "port", "port", shown="{}: any free port")
    add_option(
        p, RefitConfig, "every",
        "labels between refits of --model in the background (0: only on the page's button)",
        flag="--refit-every",
    )  # fmt: skip
    p.add_argument("--no-refit", action="store_true", help="never refit the model")
    p.add_argument(
        "--refit-dir", type=Path,
        help="where refitted bundles and their logs go [LABELS stem + .refits/, beside it]",
    )  # fmt: skip
    p.add_argument(
        "--token-file",
        type=Path,
        help="file whose first line is the token that labelling needs when --host is not "
        "loopback [$HITSTREAM_HTTP_TOKEN]",
    )


def run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from hitstream.http_base import read_token
    from trainer.labelling.server import LabelServer
    from trainer.labelling.session import open_session

    token = read_token(args.token_file)
    session = open_session(
        args.runs,
        args.dataset,
        args.labels,
        model=args.model,
        bank=args.bank,
        order=args.order,
        classes=tuple(c for c in args.classes.split(",") if c.strip()),
        page_size=args.page_size,
        crop=args.crop,
        progress=True,
        photon_unit=args.photon_unit,
    )
    refitter, why = _refitter(args, session)
    try:
        server = LabelServer(
            session, args.host, args.port, token=token, refitter=refitter, refit_off=why
        )
    except BaseException:
        session.close()
        raise
    url = server.url
    if token is not None and not server.loopback:  # the page sends it with every label
        url += f"#token={quote(token, safe='')}"
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    state = session.state()
    print(
        f"ready: labelling page at {url} ({state['n_frames']} frames, order "
        f"{state['order']}, {state['labelled']} labelled; saving to {args.labels}; Ctrl-C stops)",
        flush=True,
    )
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop()
    counts = ", ".join(f"{c} {n}" for c, n in session.counts().items())
    print(f"labels in {args.labels}: {counts or 'none'}", flush=True)
    if refitter is not None and (done := refitter.state()["history"]):
        last = done[-1]
        print(
            f"last refit: {last['labels']} labels, held-out accuracy {last['before']:.3f} -> "
            f"{last['after']:.3f}; bundle {last['bundle']} (POST /model to serve it)",
            flush=True,
        )
    return 0


def _refitter(args: argparse.Namespace, session: Any) -> tuple[Any, str]:
    """The session's refitter, or None and why there is none."""
    from trainer.labelling.refit import RefitConfig, Refitter, refit_workdir, unavailable_reason

    why = "--no-refit" if args.no_refit else unavailable_reason(args.model)
    if why is not None:
        return None, why
    cfg = RefitConfig(
        model=args.model,
        runs=tuple(args.runs),
        dataset=args.dataset,
        workdir=args.refit_dir or refit_workdir(args.labels),
        photon_unit=args.photon_unit,
        every=args.refit_every,
    )
    return Refitter(session, cfg), ""
