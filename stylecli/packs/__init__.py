"""Model packs (safetensors + JSON manifest) and the import of official checkpoints."""

from .pack import Pack, PackError, list_packs, verify_pack, write_pack

__all__ = ["Pack", "PackError", "list_packs", "verify_pack", "write_pack"]
