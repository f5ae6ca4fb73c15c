"""File access: safetensors headers, lazy tensor reading, shards and model folders, Hub ids, FP8
dequantization, checked JSON configs. Depends on nothing else in io/.
"""
