"""deltaspec: exact spectra of fine-tuning weight updates (full FT, LoRA, MultiLoRA, PEFT variants)."""
__version__ = "0.1.0"
