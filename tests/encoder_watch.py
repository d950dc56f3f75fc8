"""Checks that the frozen protocols never change an encoder (shared by the protocol tests)."""
from __future__ import annotations

import hashlib


def state_hash(module) -> str:
    """SHA-256 over a module's state dict: names and exact bytes, in name order."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def watch_probe_encoder(monkeypatch) -> list[tuple[str, str]]:
    """Wraps ``tasks.frozen.probe_encoder`` for the test: the returned list gets the
    encoder's hash before and after each call."""
    import tasks.frozen as frozen_mod

    hashes: list[tuple[str, str]] = []
    real = frozen_mod.probe_encoder

    def watched(encoder, *args, **kwargs):
        before = state_hash(encoder)
        out = real(encoder, *args, **kwargs)
        hashes.append((before, state_hash(encoder)))
        return out

    monkeypatch.setattr(frozen_mod, "probe_encoder", watched)
    return hashes
