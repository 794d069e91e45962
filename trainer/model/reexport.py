"""Re-export a bundle's Keras model as a new bundle: what ``trainer export`` does.

:func:`reexport` reads ``model.keras`` and the ``manifest.json`` beside it (classes,
thresholds, geometry, training summary and metrics are carried over), builds the ONE
inference graph again (with the template matcher when a bank is given) and writes a new
bundle; the weights are unchanged, the version changes with the graph. Keras is imported
only inside :func:`reexport`.
"""

from __future__ import annotations

import json
from pathlib import Path

from hitstream.errors import BundleError, ConfigError
from hitstream.geometry import geometry_from_attrs


def reexport(
    keras_path: Path,
    out: Path,
    bank: Path | None = None,
    name: str | None = None,
    force: bool = False,
) -> Path:
    """Export ``keras_path`` again with the manifest fields of its bundle (also the background's
    training range and the novelty reference); returns ``out``."""
    import keras

    from trainer.model.export import export_bundle

    keras_path = Path(keras_path)
    if not keras_path.is_file():
        raise BundleError(f"{keras_path}: no such Keras model file")
    src = keras_path.parent
    mpath = src / "manifest.json"
    if not mpath.is_file():
        raise BundleError(f"{src}: no manifest.json beside {keras_path.name}")
    try:
        old = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{mpath}: unreadable manifest ({exc})") from exc
    if Path(out).exists() and not force:
        raise ConfigError(f"{out} already exists; pass --force to replace it")
    geometry = geometry_from_attrs(old.get("geometry"), where=str(mpath))
    model = keras.models.load_model(keras_path, compile=False)
    training = dict(old.get("training") or {})
    training["re_exported"] = {
        "command": "trainer export",
        "from": f"{old.get('name')}:{old.get('version')}",
        "version": old.get("version"),
        "bank": Path(bank).name if bank else None,
    }
    extra = {
        p.name: p
        for p in (src / "training.png",)
        if p.is_file() and "training.png" in old.get("files", {})
    }
    metrics = old.get("metrics") or None
    level = ((old.get("background") or {}).get("training_range") or {}).get("level")
    return export_bundle(
        model,
        out,
        name=name or old["name"],
        classes=old["classes"],
        hit_classes=old.get("hit_classes", ()),
        keep_classes=old.get("keep_classes", ()),
        thresholds=old.get("thresholds"),
        training_summary=training,
        metrics=metrics,
        extra_files=extra,
        force=force,
        geometry=geometry,
        bank=bank,
        background_range=(float(level[0]), float(level[1])) if level else None,
        novelty=old.get("novelty") or None,
    )
