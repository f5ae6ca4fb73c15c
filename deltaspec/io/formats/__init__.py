"""One reader per checkpoint format family (`read_<format>(...) → Updates`); registered in io/detect.py
(FORMATS, detection) and dispatched by `deltaspec.io.load`.
"""
