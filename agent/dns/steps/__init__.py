"""The links of the resolver chain, one small class per file (see `pipeline.py` for the order)."""
