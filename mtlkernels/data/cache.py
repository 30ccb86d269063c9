"""The user cache of preprocessed tensors: ``$MTLK_CACHE_DIR``, else the platform's user cache
directory (``~/.cache/mtlkernels`` on Linux). Entries are keyed by the caller (source files'
hashes and the preprocessing version), written atomically, and a corrupt entry is rebuilt."""
from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import zipfile

import torch


def cache_dir() -> str:
    path = os.environ.get("MTLK_CACHE_DIR")
    if not path:
        import platformdirs

        path = platformdirs.user_cache_dir("mtlkernels")
    return path


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(key: str):
    """The entry saved under ``key``, or None (missing, unreadable or corrupt)."""
    path = os.path.join(cache_dir(), key + ".pt")
    if not os.path.exists(path):
        return None
    try:
        return torch.load(path, weights_only=False)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile):
        return None


def save(key: str, obj) -> None:
    """Saves ``obj`` under ``key``; a cache directory that cannot be written is skipped."""
    root = cache_dir()
    try:
        os.makedirs(root, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, os.path.join(root, key + ".pt"))
    except OSError:
        pass
