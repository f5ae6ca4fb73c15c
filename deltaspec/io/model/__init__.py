"""Model knowledge: layer names, MoE expert layouts, Stable Diffusion key patterns, base-weight lookup
for SD names. Depends only on io/files.
"""
