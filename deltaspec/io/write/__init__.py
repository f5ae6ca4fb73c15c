"""Writers (PEFT LoRA adapters) and the checks on where outputs may go (never into an input).
"""
