"""The merge math: how multiplicative adapters (DoRA, IA3, OFT) merge into W0, and LoHa/LoKr tensors as
exact factored forms. Pure tensor functions; depends only on io/files and io/model.
"""
